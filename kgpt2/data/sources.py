"""Corpus readers: every source becomes a stream of `Document`s.

Formats (auto-detected, or `--format`):
  papers       JSON Lines of scientific_papers records (Cohan et al.: article_id,
               article_text, abstract_text with <S>...</S>), MemSum's {"text",
               "summary"} variant, or {"article", "abstract"} strings; a folder of
               train/val/test.jsonl keeps those splits
  hf           `hf:<datasets id>[:<config>]` (e.g. hf:ccdv/pubmed-summarization) or a
               local .parquet/.arrow with article/abstract columns, via `datasets`
  sumpubmed    SumPubMed's folder (line_text/text_<i>.txt + abstract/abstract_<i>.txt)
  text/folder  a .txt file or a folder of them (one document each, or `separator`)
  table        CSV / TSV / parquet / JSONL with a named text column, via pandas
  alpaca       instruction/input/output, rendered with the Alpaca template
  preferences  instruction/input + chosen (or prompt + chosen), the same way
  pydoc        CPython's own Language Reference topics (offline demo corpus)

Readers stream (one record or one chunk at a time), so a corpus of any size is
read in bounded memory (JSON-array files, i.e. instruction sets, are the only
ones parsed whole). A recoverable bad record (invalid or truncated JSON line,
non-UTF-8 bytes, empty document) is skipped and counted in `SourceStats` with
its file and line; a missing file or a wrong schema is a `UserError` naming them.

    >>> from kgpt2.data.sources import open_source
    >>> src = open_source("pydoc")
    >>> doc = next(iter(src))
    >>> doc.id, len(doc.text) > 0
    ('pydoc:assert', True)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from kgpt2.errors import UserError

CONTENTS = ("body", "abstract", "both")
SPLIT_NAMES = {"train": "train", "val": "validation", "valid": "validation",
               "validation": "validation", "test": "test"}
BODY_KEYS = ("article_text", "article", "text")
ABSTRACT_KEYS = ("abstract_text", "abstract", "summary")
_SENT_TAGS = re.compile(r"\s*</?S>\s*")
_SECTION_HEADER = re.compile(r"^[A-Z][A-Z &/-]*$")  # SumPubMed's BACKGROUND/RESULTS/...
_TABLE_CHUNK_ROWS = 2048


@dataclass
class Document:
    id: str
    text: str
    split: str | None = None  # a source's own split, when it has one


@dataclass
class SourceStats:
    read: int = 0
    skipped: dict = field(default_factory=dict)  # reason -> count
    examples: list = field(default_factory=list)  # first few "file:line: reason"

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {reason}")

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())


class Source:
    """An iterable of Documents with the stats of what was skipped."""

    def __init__(self, path, fmt: str, contents: str = "both", text_column: str = "text",
                 separator: str | None = None):
        self.path = path
        self.format = fmt
        self.contents = contents
        self.text_column = text_column
        self.separator = separator
        self.stats = SourceStats()

    def __iter__(self) -> Iterator[Document]:
        self.stats = SourceStats()
        for doc in _READERS[self.format](self):
            if not doc.text.strip():
                self.stats.skip("empty document", doc.id)
                continue
            self.stats.read += 1
            yield doc

    def files(self) -> list[Path]:
        """The files the reader reads, for the manifest's input signature."""
        if self.format == "pydoc" or str(self.path).startswith("hf:"):
            return []
        p = Path(self.path)
        if not p.is_dir():
            return [p]
        if self.format == "sumpubmed":
            return sorted((p / "line_text").glob("text_*.txt")) + sorted((p / "abstract").glob("abstract_*.txt"))
        return _folder_files(p, "*.txt" if self.format == "folder" else "*.jsonl")


def detect_format(path: str) -> str:
    """Guess the format of `path` from its name and first record."""
    if path == "pydoc":
        return "pydoc"
    if path.startswith("hf:"):
        return "hf"
    p = Path(path)
    if not p.exists():
        raise UserError(f"source '{path}' does not exist")
    if p.is_dir():
        if (p / "line_text").is_dir():
            return "sumpubmed"
        if any(f.suffix == ".jsonl" for f in p.iterdir()):
            return "papers"
        return "folder"
    suffix = p.suffix.lower()
    if suffix == ".arrow":  # only `datasets` reads Arrow files here
        return "hf"
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return "hf" if set(pq.read_schema(p).names) & {"article", "abstract"} else "table"
    if suffix in (".csv", ".tsv"):
        return "table"
    if suffix in (".json", ".jsonl"):
        first = _first_record(p)
        keys = set(first) if isinstance(first, dict) else set()
        if {"chosen", "rejected"} <= keys:
            return "preferences"
        if {"instruction", "output"} <= keys:
            return "alpaca"
        if keys & set(BODY_KEYS) and keys & set(ABSTRACT_KEYS):
            return "papers"
        if keys:
            return "table"
        raise UserError(f"cannot tell the format of '{p}' from its first record; pass --format")
    return "text"


def _first_record(p: Path):
    """The first JSON object of a JSON array or JSON Lines file, for format detection.

    Lines that are not UTF-8 JSON are passed over here (the reader skips and
    counts them); a file with no such line at all is refused.
    """
    with open(p, "rb") as f:
        line = f.readline()
        while line and not line.strip():
            line = f.readline()
        if line.lstrip().startswith(b"["):  # a JSON array: look at its first object
            return next(iter(_json_array(p)), {})
        bad, first_bad = 0, None
        while line:
            try:
                return json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                bad += bool(line.strip())
                first_bad = first_bad or isinstance(e, UnicodeDecodeError)
                line = f.readline()
    if bad:
        advice = ("it is in another encoding: re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8)" if first_bad
                  else "it is not JSON Lines: pass --format")
        raise UserError(f"none of the {bad} lines of '{p}' is UTF-8 JSON; {advice}")
    return {}


def open_source(path: str, fmt: str | None = None, contents: str = "both",
                text_column: str = "text", separator: str | None = None) -> Source:
    path = str(path)
    if fmt is None:
        fmt = detect_format(path)
    if fmt not in _READERS:
        raise UserError(f"unknown format '{fmt}' (one of: {', '.join(_READERS)})")
    if contents not in CONTENTS:
        raise UserError(f"unknown contents '{contents}' (one of: {', '.join(CONTENTS)})")
    if fmt != "pydoc" and not path.startswith("hf:") and not Path(path).exists():
        raise UserError(f"source '{path}' does not exist")
    return Source(path, fmt, contents, text_column, separator)


# Scientific papers ---------------------------------------------------------
def _join(sentences, where: str) -> str:
    """Sentences (a list, or one string) as text: <S>/</S> stripped, one per line."""
    if sentences is None:
        return ""
    if isinstance(sentences, str):
        return _SENT_TAGS.sub(" ", sentences).strip()
    if not isinstance(sentences, (list, tuple)) or not all(isinstance(s, str) for s in sentences):
        raise UserError(f"{where}: expected a string or a list of strings, got {type(sentences).__name__}")
    return "\n".join(_SENT_TAGS.sub(" ", s).strip() for s in sentences if s and s.strip())


def _first_key(record: dict, keys):
    return next((record[k] for k in keys if k in record), None)


def paper_text(record: dict, contents: str, where: str = "record") -> str:
    """Body and/or abstract (abstract first) of one scientific_papers-style record."""
    body = _join(_first_key(record, BODY_KEYS), where) if contents != "abstract" else ""
    abstract = _join(_first_key(record, ABSTRACT_KEYS), where) if contents != "body" else ""
    return "\n\n".join(p for p in (abstract, body) if p)


def _jsonl_records(path: Path, stats: SourceStats):
    """(line number, dict) for each valid JSON object line; bad lines are counted."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                stats.skip("not UTF-8", where)
                continue
            except json.JSONDecodeError:
                stats.skip("invalid or truncated JSON", where)
                continue
            if not isinstance(record, dict):
                stats.skip("not a JSON object", where)
                continue
            yield lineno, record


def _folder_files(folder: Path, pattern: str) -> list[Path]:
    """Text folders are read recursively (`**/*.txt`), paper folders at the top level (`*.jsonl`)."""
    return sorted(folder.rglob(pattern) if pattern == "*.txt" else folder.glob(pattern))


def _read_papers(src: Source):
    for path in src.files():
        split = SPLIT_NAMES.get(path.stem.lower())
        for lineno, record in _jsonl_records(path, src.stats):
            where = f"{path}:{lineno}"
            if not set(record) & set(BODY_KEYS + ABSTRACT_KEYS):
                raise UserError(f"{where}: not a scientific_papers record (expected article_text/abstract_text, "
                                f"article/abstract or text/summary; found {', '.join(sorted(record)) or 'no keys'})")
            doc_id = str(record.get("article_id") or record.get("id") or f"{path.stem}:{lineno}")
            yield Document(doc_id, paper_text(record, src.contents, where), split)


def load_hf(path: str, streaming: bool = True):
    """The splits of `hf:<id>[:<config>]` or of a local parquet/arrow file, through `datasets`."""
    try:
        import datasets
    except ImportError:
        raise UserError("reading hf: sources needs the `datasets` package (pip install 'kgpt2[data]')") from None
    if path.startswith("hf:"):
        name, _, config = path[3:].partition(":")
        args, kwargs = (name, config or None), {}
    else:
        args, kwargs = ("parquet" if path.endswith(".parquet") else "arrow",), {"data_files": {"train": path}}
    try:
        return datasets.load_dataset(*args, streaming=streaming, **kwargs)
    except Exception as e:  # network, unknown dataset, bad file: one clear line
        raise UserError(f"cannot open '{path}' with datasets: {str(e).splitlines()[0][:300]}") from None


def _read_hf(src: Source):
    """`hf:<id>[:<config>]` or a local parquet/arrow file, streamed by `datasets`."""
    path = where = str(src.path)
    splits = load_hf(path)
    for split_name, rows in splits.items():
        split = SPLIT_NAMES.get(split_name.lower()) if path.startswith("hf:") else None
        for i, row in enumerate(rows):
            row_where = f"{where} [{split_name} row {i}]"
            if i == 0 and not set(row) & set(BODY_KEYS + ABSTRACT_KEYS):
                raise UserError(f"{row_where}: expected article/abstract columns, found {', '.join(row)}")
            doc_id = str(row.get("article_id") or row.get("id") or f"{split_name}:{i}")
            yield Document(doc_id, paper_text(row, src.contents, row_where), split)


def _read_sumpubmed(src: Source):
    """SumPubMed: body = line_text/text_<i>.txt, abstract = abstract/abstract_<i>.txt,
    section headers (BACKGROUND, RESULTS, CONCLUSIONS) dropped; id sumpubmed_<i>."""
    root = Path(src.path)
    numbered = sorted((int(m.group(1)), f) for f in (root / "line_text").glob("text_*.txt")
                      if (m := re.fullmatch(r"text_(\d+)\.txt", f.name)))
    if not numbered:
        raise UserError(f"'{root}/line_text' holds no text_<i>.txt files (SumPubMed layout)")
    for i, body_path in numbered:
        paths = {"abstract": [root / "abstract" / f"abstract_{i}.txt"], "body": [body_path],
                 "both": [root / "abstract" / f"abstract_{i}.txt", body_path]}[src.contents]
        parts = []
        for path in paths:
            if not path.is_file():
                continue  # an article without an abstract file: body only
            try:
                parts.append(_without_headers(path.read_text(encoding="utf-8")))
            except UnicodeDecodeError as e:
                line = e.object[:e.start].count(b"\n") + 1
                src.stats.skip("not UTF-8", f"{path}:{line}")
                break
        else:
            yield Document(f"sumpubmed_{i}", "\n\n".join(p for p in parts if p))


def _without_headers(text: str) -> str:
    lines = (line.strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line and not _SECTION_HEADER.match(line))


# Plain text ----------------------------------------------------------------
def _read_text_file(path: Path, stats: SourceStats, separator: str | None):
    """One document per file, or per `separator`-delimited part, read in 1 MB
    chunks so a large file with a separator never sits in memory whole."""
    sep = separator.encode("utf-8") if separator else None
    # A bytearray grows in place: `bytes +=` would copy everything read so far per chunk.
    part_index, lineno, pending = 0, 1, bytearray()

    def emit(raw: bytes):
        nonlocal part_index, lineno
        where = f"{path}:{lineno}"
        doc_id = f"{path.name}:{part_index}" if sep else path.name
        part_index += 1
        lineno += raw.count(b"\n") + (sep.count(b"\n") if sep else 0)
        try:
            return Document(doc_id, raw.decode("utf-8").strip() if sep else raw.decode("utf-8"))
        except UnicodeDecodeError:
            stats.skip("not UTF-8", where)
            return None

    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            pending += chunk
            if sep:
                *parts, pending = pending.split(sep)
                for raw in parts:
                    if (doc := emit(raw)) is not None:
                        yield doc
    if (not sep or pending.strip()) and (doc := emit(pending)) is not None:
        yield doc


def _read_text(src: Source):
    yield from _read_text_file(Path(src.path), src.stats, src.separator)


def _read_folder(src: Source):
    files = src.files()
    if not files:
        raise UserError(f"folder '{src.path}' holds no .txt files")
    for path in files:
        yield from _read_text_file(path, src.stats, src.separator)


# Tables --------------------------------------------------------------------
def _table_chunks(path: Path):
    """DataFrames of a CSV/TSV/JSONL/parquet file, a few thousand rows at a time."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=_TABLE_CHUNK_ROWS):
            yield batch.to_pandas()
    elif suffix in (".jsonl", ".json"):
        yield from pd.read_json(path, lines=True, chunksize=_TABLE_CHUNK_ROWS, dtype=False)
    else:
        yield from pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", chunksize=_TABLE_CHUNK_ROWS,
                               dtype=str, keep_default_na=False)


def _read_table(src: Source):
    path, column, row = Path(src.path), src.text_column, 0
    try:
        for chunk in _table_chunks(path):
            if column not in chunk.columns:
                raise UserError(f"{path}: no column '{column}' (columns: {', '.join(map(str, chunk.columns))}); "
                                "pass --text-column")
            ids = chunk["id"] if "id" in chunk.columns else None
            for j, text in enumerate(chunk[column].tolist()):
                doc_id = str(ids.iloc[j]) if ids is not None else f"{path.name}:{row + j}"
                yield Document(doc_id, text if isinstance(text, str) else "")
            row += len(chunk)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 near row {row}; re-encode the file as UTF-8") from None
    except ValueError as e:  # pandas' parse errors (a truncated JSON line, a ragged CSV row)
        raise UserError(f"{path}: cannot parse near row {row}: {str(e).splitlines()[0][:200]}") from None


# Instruction and preference data --------------------------------------------
def _json_array(path: Path):
    """Records of a JSON array file; None for JSON Lines, which are streamed line by
    line (a non-UTF-8 line skipped and counted there, not the whole file refused)."""
    with open(path, "rb") as f:
        while (first := f.read(1)).isspace():
            pass
    if first != b"[":
        return None
    text = path.read_bytes()
    try:
        text = text.decode("utf-8")
    except UnicodeDecodeError as e:
        line = text[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8") from None
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    return None


def json_records(src: Source):
    """(where, record) of a JSON array or JSON Lines file of objects."""
    path = Path(src.path)
    records = _json_array(path)
    if records is None:
        for lineno, record in _jsonl_records(path, src.stats):
            yield f"{path}:{lineno}", record
        return
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            src.stats.skip("not a JSON object", f"{path} [record {i}]")
            continue
        yield f"{path} [record {i}]", record


def _read_alpaca(src: Source):
    # One reader for instruction data: kgpt2.instructions (template, response mask, hf: ids).
    from kgpt2.instructions import read_alpaca

    yield from read_alpaca(src)


def _read_preferences(src: Source):
    from kgpt2.instructions import read_preferences

    yield from read_preferences(src)


def _read_pydoc(src: Source):
    # The Python Language Reference articles that ship inside every CPython:
    # ~80 documents, ~465 KB, no download, same on every machine.
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document(f"pydoc:{name}", topics[name])


_READERS = {
    "pydoc": _read_pydoc,
    "papers": _read_papers,
    "hf": _read_hf,
    "sumpubmed": _read_sumpubmed,
    "text": _read_text,
    "folder": _read_folder,
    "table": _read_table,
    "alpaca": _read_alpaca,
    "preferences": _read_preferences,
}
FORMATS = tuple(_READERS)
