"""Opening a corpus: every source becomes a stream of `Document`s, through its format's reader.

This module detects the format and holds the table of readers, one per
format (`_READERS`); the readers live beside it in kgpt2/data/: papers.py
(papers, hf, sumpubmed), records.py (table), instructions.py (alpaca,
messages, preferences), and here (text, folder, pydoc).

Formats (auto-detected, or `--format`):
  papers       JSON Lines of scientific_papers records (Cohan et al.: article_id,
               article_text, abstract_text with <S>...</S>), MemSum's {"text",
               "summary"} variant, or {"article", "abstract"} strings; a folder of
               train/val/test.jsonl keeps those splits
  hf           `hf:<datasets id>[:<config>]` (e.g. hf:ccdv/pubmed-summarization) or a
               local .parquet/.arrow with article/abstract columns, via `datasets`
  sumpubmed    SumPubMed's folder (line_text/text_<i>.txt + abstract/abstract_<i>.txt)
  text/folder  a .txt file or a folder of them (one document each, or `separator`); a folder
               that also holds datasets of other formats (a parent of several) is refused,
               naming each, unless --format says how to read it
  table        CSV / TSV / parquet / JSONL with a named text column, via pandas (a
               --text-column other than "text" reads records of the next formats as a table)
  alpaca       instruction/input/output, rendered with the Alpaca template (JSON, JSON
               Lines, or rows of a CSV / TSV / parquet table, as for preferences)
  preferences  instruction/input + chosen (or prompt + chosen), the same way
  messages     {"messages": [{"role", "content"}, ...]} chat JSON Lines, rendered
               with the `chat` template; the loss is on assistant turns only
  pydoc        CPython's own Language Reference topics (offline demo corpus)

Any of these files may be gzip, bzip2 or xz compressed (`corpus.jsonl.gz`; kgpt2.data.compression).

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

import os
from pathlib import Path
from typing import Iterator

from kgpt2.data.compression import damaged_sentence, is_damaged, open_bytes, plain, refuse_unsupported
from kgpt2.data.documents import BINARY, NOT_UTF8, UTF16, Document, SourceStats
from kgpt2.data.instructions import read_alpaca, read_messages, read_preferences
from kgpt2.data.papers import ABSTRACT_KEYS, BODY_KEYS, read_hf, read_papers, read_sumpubmed
from kgpt2.data.records import TABLE_SUFFIXES, first_record, is_table_file, read_table, records_format, table_columns
from kgpt2.data.shard_folder import FORMAT as SHARD_FORMAT
from kgpt2.data.shard_folder import MANIFEST, os_error_sentence, read_manifest
from kgpt2.errors import UserError

CONTENTS = ("body", "abstract", "both")
_FOLDER_FORMATS = {"sumpubmed": "a SumPubMed folder (line_text/text_<i>.txt, abstract/abstract_<i>.txt)",
                   "folder": "a folder of .txt files (--format text reads one file)"}


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
        self._listed: list[Path] | None = None

    def __iter__(self) -> Iterator[Document]:
        self.stats = SourceStats()
        try:
            for doc in _READERS[self.format](self):
                if not doc.text.strip():
                    self.stats.skip("empty document", doc.where or doc.id)
                    continue
                self.stats.read += 1
                yield doc
        except Exception as e:  # zlib.error and lzma.LZMAError are no OSError
            if not is_damaged(e):
                raise
            raise UserError(damaged_sentence(self.path, e)) from None

    def files(self) -> list[Path]:
        """The files the reader reads, for the manifest's input signature: the list `list_files` took, if it did."""
        return list(self._listed) if self._listed is not None else self._list_files()

    def list_files(self) -> list[Path]:
        """List the files once for a whole prepare: its signature, progress lines and reader all use that list
        (a folder of 120,000 articles on a network drive took a listing each), and a file added meanwhile is
        neither read nor signed."""
        self._listed = self._list_files()
        return list(self._listed)

    def _list_files(self) -> list[Path]:
        if self.format == "pydoc" or str(self.path).startswith("hf:"):
            return []
        p = Path(self.path)
        if not p.is_dir():
            return [p]
        if self.format == "sumpubmed":
            return sorted((p / "line_text").glob("text_*.txt")) + sorted((p / "abstract").glob("abstract_*.txt"))
        return _folder_files(p, ".txt" if self.format == "folder" else ".jsonl")


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
        refuse_kgpt2_folder(p)
        if (p / "line_text").is_dir():
            return "sumpubmed"
        if is_tokenizer_folder(p):  # read as text, its merges.txt became an article (or encoder.json "papers")
            raise UserError(f"'{p}' is a tokenizer (vocab.bpe or merges.txt), not a corpus; pass it as --tokenizer, "
                            "and the text to tokenise as --source")
        fmt = "papers" if any(plain(f).suffix == ".jsonl" for f in p.iterdir()) else "folder"
        refuse_several_datasets(p, fmt)
        return fmt
    refuse_unsupported(p)
    suffix = plain(p).suffix.lower()  # corpus.jsonl.gz is JSON Lines (kgpt2.data.compression)
    if suffix == ".arrow":  # only `datasets` reads Arrow files here
        return "hf"
    if is_table_file(p):
        return _table_format(p, suffix)
    if suffix in (".json", ".jsonl"):
        first = first_record(p)
        if first is None:
            raise UserError(f"source '{p}' holds no records: it is empty")
        keys = set(first) if isinstance(first, dict) else set()
        if fmt := records_format(keys):
            return fmt
        if keys & set(BODY_KEYS) and keys & set(ABSTRACT_KEYS):
            return "papers"
        if keys:
            return "table"
        raise UserError(f"cannot tell the format of '{p}' from its first record; pass --format")
    return "text"


def _table_format(p: Path, suffix: str) -> str:
    """A CSV/TSV/parquet file's format, from its columns: Alpaca or preference rows are records as in JSON Lines."""
    try:
        columns = set(table_columns(p))
    except Exception:  # ragged, not UTF-8, no parquet: the table reader says which, with the row
        return "table"
    if not columns:
        raise UserError(f"source '{p}' holds no records: it is empty")
    if suffix == ".parquet" and columns & {"article", "abstract"}:  # only `datasets` reads those
        return "hf"
    return records_format(columns) or "table"


def open_source(path: str, fmt: str | None = None, contents: str = "both",
                text_column: str = "text", separator: str | None = None) -> Source:
    path = str(path)
    if fmt is None:
        try:
            fmt = detect_format(path)
        except OSError as e:  # a file or folder it may not read (its first record, a subfolder's listing)
            raise UserError(os_error_sentence(e, Path(path), source=Path(path))) from None
        if text_column != "text" and fmt in ("alpaca", "preferences", "messages"):
            fmt = "table"  # --text-column names the one column to read: a table, as it was asked for
    if fmt not in _READERS:
        raise UserError(f"unknown format '{fmt}' (one of: {', '.join(_READERS)})")
    if fmt == "pydoc" and path != "pydoc":  # the reader takes no path: the source given would go unread, unsaid
        raise UserError(f"--format pydoc reads CPython's own documentation, not '{path}'; give --source pydoc alone, "
                        f"or leave --format out to read '{path}'")
    if contents not in CONTENTS:
        raise UserError(f"unknown contents '{contents}' (one of: {', '.join(CONTENTS)})")
    if fmt != "pydoc" and not path.startswith("hf:") and not Path(path).exists():
        raise UserError(f"source '{path}' does not exist")
    if fmt != "pydoc" and Path(path).is_dir():
        refuse_kgpt2_folder(Path(path))  # a --format given does not make them a corpus
    if fmt in _FOLDER_FORMATS and Path(path).is_file():
        raise UserError(f"--format {fmt} reads {_FOLDER_FORMATS[fmt]}, and '{path}' is a file")
    return Source(path, fmt, contents, text_column, separator)


def reading_line(src: Source) -> str | None:
    """What a folder `src` is read as, in one line (prepare says it before its progress bar, so a folder taken
    for another format than meant is seen): its format and how many files it reads; None for a file or a dataset id.

    >>> import tempfile; notes = Path(tempfile.mkdtemp()); _ = (notes / "a.txt").write_text("One.")
    >>> reading_line(Source(notes, "folder", separator="\\n\\n")).split(" as ")[1]
    'folder: 1 .txt file under it, split at --separator'
    """
    if src.format == "pydoc" or str(src.path).startswith("hf:") or not Path(src.path).is_dir():
        return None  # one file's format is its name's and first record's: no guess among several
    line = f"reading '{src.path}' as {src.format}"
    files = src.files()
    if not files and src.format in ("folder", "sumpubmed", "papers"):
        return None  # an empty folder: the reader's error says it alone ("folder '...' holds no .txt files")
    if src.format == "folder":
        each = "split at --separator" if src.separator else "one document each"
        return f"{line}: {len(files):,} .txt file{'s' * (len(files) != 1)} under it, {each}"
    if src.format == "sumpubmed":
        return f"{line}: {sum(f.parent.name == 'line_text' for f in files):,} articles (line_text/)"
    if src.format == "papers":
        names = [f.name for f in files]
        return f"{line}: {', '.join(names) if len(names) <= 4 else f'{len(names):,} .jsonl files'} (their splits kept)"
    return line


def refuse_kgpt2_folder(p: Path) -> None:
    """A shard set or a run is kgpt2's output, not a corpus: read as one, its ids.txt (or a run's votes.jsonl)
    became articles."""
    kind = kgpt2_folder_kind(p)
    if kind == "a kgpt2 shard set":
        raise UserError(f"'{p}' is a kgpt2 shard set (what `kgpt2 prepare` writes), not a corpus; --source takes the "
                        f"text it was made from (to train a model on the set itself: data.shards = \"{p}\")")
    if kind == "a kgpt2 run":
        raise UserError(f"'{p}' is a kgpt2 run (config.json and checkpoints), not a corpus; --source takes the text "
                        "itself (a file or folder of it, or a dataset)")


def kgpt2_folder_kind(p: Path) -> str | None:
    """'a kgpt2 shard set', 'a kgpt2 run', or None for a folder that is neither."""
    if (p / MANIFEST).is_file() and (read_manifest(p).get("format") == SHARD_FORMAT or any(p.glob("*.ids.txt"))):
        return "a kgpt2 shard set"
    if (p / "config.json").is_file() and (any(p.glob("ckpt-*")) or (p / "logs").is_dir()):
        return "a kgpt2 run"
    return None


# Nested datasets ------------------------------------------------------------
DATA_SUFFIXES = (".json", ".jsonl", ".arrow", *TABLE_SUFFIXES)  # files of records: datasets, never read as text
LISTED = 6  # datasets named in the refusal; the rest are counted


def refuse_several_datasets(folder: Path, fmt: str) -> None:
    """Refuse a folder detected as `fmt` (folder or papers) that holds datasets that format would not read as
    they are (SumPubMed or JSON Lines folders, JSON / table files, tokenizers, kgpt2 output): a parent folder of
    several datasets was read as one folder of .txt files, mixing some (a SumPubMed abstract became an article)
    and skipping the rest in silence. `--format` given reads it as told."""
    found = nested_datasets(folder, fmt)
    if not any(kind not in ("text", "folder") for _, kind in found):
        return
    names = ", ".join(f"{name} as {kind}" for name, kind in found[:LISTED])
    more = f" and {len(found) - LISTED} more" if len(found) > LISTED else ""
    several = len(found) > 1
    read = "its .txt files as one folder" if fmt == "folder" else "the .jsonl files at its top"
    raise UserError(f"'{folder}' holds {'several datasets' if several else 'a dataset'} ({names}{more}), and reading "
                    f"{read} would mix or skip {'them' if several else 'it'}; give {'one of them' if several else 'it'}"
                    f" as --source (--format {fmt} reads {read} all the same)")


def nested_datasets(folder: Path, fmt: str) -> list[tuple[str, str]]:
    """(name relative to `folder`, what it is) for each dataset under it, sorted: a recognised subfolder (not
    entered), a JSON / table file, and the .txt files of each top-level subfolder. `fmt` "folder" reads the .txt
    files at its top; "papers" its top-level .jsonl, and the files beside them (a README, dataset_info.json) are
    left out too."""
    found, texts = [], {}
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_unreadable):
        d = Path(dirpath)
        dirnames.sort()
        kind = _folder_kind(d) if d != folder else None
        if kind:
            found.append((f"{d.relative_to(folder).as_posix()}/", kind))
            dirnames[:] = []  # a dataset of its own: what it holds is its reader's
            continue
        top = d == folder
        for name in sorted(filenames) if not (top and fmt == "papers") else ():  # beside its .jsonl: their notes
            f = d / name
            suffix = plain(f).suffix.lower()
            if suffix in DATA_SUFFIXES:
                found.append((f.relative_to(folder).as_posix(), f))
            elif suffix == ".txt" and not top:
                group = f.relative_to(folder).parts[0] + "/"
                texts[group] = texts.get(group, 0) + 1
    found += [(group, "text" if n == 1 else "folder") for group, n in texts.items()]
    found.sort()
    return [(name, _file_kind(kind) if isinstance(kind, Path) and i < LISTED else str(kind))
            for i, (name, kind) in enumerate(found)]


def _folder_kind(d: Path) -> str | None:
    """What a subfolder is when it is a dataset (or a tokenizer, or kgpt2 output) of its own; None otherwise."""
    if kind := kgpt2_folder_kind(d):
        return kind
    if (d / "line_text").is_dir():
        return "sumpubmed"
    if is_tokenizer_folder(d):
        return "a tokenizer"
    jsonl = sorted(f for f in d.iterdir() if plain(f).suffix.lower() == ".jsonl" and f.is_file())
    return _file_kind(jsonl[0]) if jsonl else None


def is_tokenizer_folder(d: Path) -> bool:
    return (d / "vocab.bpe").is_file() or (d / "merges.txt").is_file()


def _file_kind(path: Path) -> str:
    """A data file's format as `detect_format` names it; its kind of file when it cannot tell."""
    try:
        return detect_format(str(path))
    except UserError:
        return f"a {plain(path).suffix.lower()[1:]} file"


def _unreadable(e: OSError):
    """os.walk's `onerror`: a subfolder it may not list was skipped in silence, and its files with it."""
    raise e


def _folder_files(folder: Path, suffix: str) -> list[Path]:
    """Text folders are read recursively (`**/*.txt`), paper folders at the top level (`*.jsonl`); `.gz` etc. too."""
    found = ([Path(d) / name for d, _, names in os.walk(folder, onerror=_unreadable) for name in names]
             if suffix == ".txt" else folder.glob(f"*{suffix}*"))
    files = sorted(f for f in found if plain(f).suffix == suffix and f.is_file())
    seen = {}
    for f in files:  # train.jsonl beside train.jsonl.gz would read every document twice
        if plain(f) in seen:
            raise UserError(f"'{seen[plain(f)]}' and '{f}' hold the same file, plain and compressed; keep one of them")
        seen[plain(f)] = f
    return files


# Plain text ----------------------------------------------------------------
def _read_text_file(path: Path, stats: SourceStats, separator: str | None):
    """One document per file, or per `separator`-delimited part, read in 1 MB
    chunks so a large file with a separator never sits in memory whole."""
    sep = separator.encode("utf-8") if separator else None
    name = plain(path).name  # a gzipped copy of a file gives its documents the same ids, so the same splits
    # A bytearray grows in place: `bytes +=` would copy everything read so far per chunk.
    part_index, lineno, pending = 0, 1, bytearray()

    def emit(raw: bytes):
        nonlocal part_index, lineno
        where = f"{path}:{lineno}"
        doc_id = f"{name}:{part_index}" if sep else name
        part_index += 1
        lineno += raw.count(b"\n") + (sep.count(b"\n") if sep else 0)
        try:
            return Document(doc_id, raw.decode("utf-8").strip() if sep else raw.decode("utf-8"), where=where)
        except UnicodeDecodeError:
            stats.skip(reason, where)
            return None

    with open_bytes(path) as f:
        chunk = f.read(1 << 20)
        # A byte-order mark: Windows' "Unicode" text, which the skip message (and its iconv hint) names
        reason = UTF16 if chunk[:2] in (b"\xff\xfe", b"\xfe\xff") else NOT_UTF8
        if reason == NOT_UTF8 and b"\x00" in chunk[:65536]:  # weights, an archive, an image: no encoding to fix
            stats.skip(BINARY, f"{path}")  # one skip for the file, whatever parts of it happen to decode
            return
        while chunk:
            pending += chunk
            if sep:
                *parts, pending = pending.split(sep)
                for raw in parts:
                    if (doc := emit(raw)) is not None:
                        yield doc
            chunk = f.read(1 << 20)
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


def _read_pydoc(src: Source):
    # The Python Language Reference articles that ship inside every CPython:
    # ~80 documents, ~465 KB, no download, same on every machine (imported
    # only when read, so `kgpt2 --help` does not parse it).
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document(f"pydoc:{name}", topics[name])


_READERS = {
    "pydoc": _read_pydoc,
    "papers": read_papers,
    "hf": read_hf,
    "sumpubmed": read_sumpubmed,
    "text": _read_text,
    "folder": _read_folder,
    "table": read_table,
    "alpaca": read_alpaca,
    "preferences": read_preferences,
    "messages": read_messages,
}
FORMATS = tuple(_READERS)
