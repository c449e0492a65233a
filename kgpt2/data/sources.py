"""Corpus readers: every source becomes a stream of `Document`s.

Readers stream (one record at a time), so a corpus of any size is read in
bounded memory. A recoverable bad record (an invalid JSON line, an empty
document) is skipped and counted in `SourceStats`; a missing file or a wrong
schema is a `UserError` naming the file and line.

    >>> from kgpt2.data.sources import open_source
    >>> src = open_source("pydoc")  # CPython's own Language Reference topics
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

FORMATS = ("pydoc", "papers", "text", "folder", "sumpubmed", "table", "alpaca", "preferences", "hf")
CONTENTS = ("body", "abstract", "both")
SPLIT_NAMES = {"train": "train", "val": "validation", "valid": "validation",
               "validation": "validation", "test": "test"}
_SENT_TAGS = re.compile(r"\s*</?S>\s*")


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
        reader = _READERS[self.format]
        for doc in reader(self):
            if not doc.text.strip():
                self.stats.skip("empty document", doc.id)
                continue
            self.stats.read += 1
            yield doc

    def files(self) -> list[Path]:
        """The input files, for the manifest's input signature."""
        if self.format in ("pydoc", "hf"):
            return []
        p = Path(self.path)
        return sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]


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
    if suffix in (".csv", ".parquet", ".tsv"):
        return "table"
    if suffix in (".json", ".jsonl"):
        first = _first_record(p)
        keys = set(first) if isinstance(first, dict) else set()
        if {"chosen", "rejected"} <= keys:
            return "preferences"
        if {"instruction", "output"} <= keys:
            return "alpaca"
        if keys & {"article_text", "article", "text"} and keys & {"abstract_text", "abstract", "summary"}:
            return "papers"
        if keys:
            return "table"
        raise UserError(f"cannot tell the format of '{p}' from its first record; pass --format")
    return "text"


def _first_record(p: Path):
    with open(p, "rb") as f:
        head = f.read(1 << 20).decode("utf-8", errors="replace").lstrip()
    if head.startswith("["):  # a JSON array: look at its first object
        try:
            return next(iter(json.loads(p.read_text(encoding="utf-8"))), {})
        except json.JSONDecodeError:
            raise UserError(f"'{p}' is not valid JSON") from None
    line = head.split("\n", 1)[0]
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        raise UserError(f"'{p}' line 1 is not valid JSON") from None


def open_source(path: str, fmt: str | None = None, contents: str = "both",
                text_column: str = "text", separator: str | None = None) -> Source:
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}' (one of: {', '.join(FORMATS)})")
    if contents not in CONTENTS:
        raise UserError(f"unknown contents '{contents}' (one of: {', '.join(CONTENTS)})")
    if fmt not in ("pydoc", "hf") and not Path(path).exists():
        raise UserError(f"source '{path}' does not exist")
    return Source(path, fmt, contents, text_column, separator)


# Readers -------------------------------------------------------------------
def _read_pydoc(src: Source):
    # The Python Language Reference articles that ship inside every CPython:
    # ~80 documents, ~465 KB, no download, same on every machine.
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document(f"pydoc:{name}", topics[name])


def _join(sentences) -> str:
    if isinstance(sentences, str):
        return _SENT_TAGS.sub(" ", sentences).strip()
    return "\n".join(_SENT_TAGS.sub(" ", s).strip() for s in sentences if s and s.strip())


def _paper_text(record: dict, contents: str) -> str:
    """Body and/or abstract of one scientific_papers-style record."""
    body = record.get("article_text", record.get("article", record.get("text", "")))
    abstract = record.get("abstract_text", record.get("abstract", record.get("summary", "")))
    parts = {"body": [_join(body)], "abstract": [_join(abstract)],
             "both": [_join(abstract), _join(body)]}[contents]
    return "\n\n".join(p for p in parts if p)


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
                stats.skip("invalid JSON", where)
                continue
            if not isinstance(record, dict):
                stats.skip("not a JSON object", where)
                continue
            yield lineno, record


def _read_papers(src: Source):
    p = Path(src.path)
    files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    for path in files:
        split = SPLIT_NAMES.get(path.stem.lower())
        for lineno, record in _jsonl_records(path, src.stats):
            if not (set(record) & {"article_text", "article", "text", "abstract_text", "abstract", "summary"}):
                raise UserError(
                    f"{path}:{lineno}: not a scientific_papers record "
                    "(expected article_text/abstract_text, article/abstract or text/summary)"
                )
            doc_id = str(record.get("article_id") or f"{path.stem}:{lineno}")
            yield Document(doc_id, _paper_text(record, src.contents), split)


def _read_text_file(path: Path, stats: SourceStats, separator: str | None):
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        stats.skip("not UTF-8", str(path))
        return
    if separator:
        for i, part in enumerate(text.split(separator)):
            yield Document(f"{path.name}:{i}", part.strip())
    else:
        yield Document(path.name, text)


def _read_text(src: Source):
    yield from _read_text_file(Path(src.path), src.stats, src.separator)


def _read_folder(src: Source):
    for path in sorted(Path(src.path).rglob("*.txt")):
        yield from _read_text_file(path, src.stats, src.separator)


_READERS = {
    "pydoc": _read_pydoc,
    "papers": _read_papers,
    "text": _read_text,
    "folder": _read_folder,
}


def register_reader(fmt: str, reader) -> None:
    """Add a reader for a format (used by the instruction/preference modules)."""
    _READERS[fmt] = reader
