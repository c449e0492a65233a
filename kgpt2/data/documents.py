"""What every reader yields: `Document`s, and `SourceStats` counting what it skipped.

    >>> from kgpt2.data.documents import Document, SourceStats
    >>> stats = SourceStats()
    >>> stats.skip("invalid or truncated JSON", "papers.jsonl:7")
    >>> Document("a1", "Some text.").id, stats.total_skipped, stats.examples
    ('a1', 1, ['papers.jsonl:7: invalid or truncated JSON'])
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Document:
    id: str
    text: str
    split: str | None = None  # a source's own split, when it has one
    where: str | None = None  # where a skip message puts it (file:line, [row N]); its id when None


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

    def summary(self) -> str:
        """What was skipped, for the error of a source left with no document; "" when nothing was.

        >>> stats = SourceStats()
        >>> stats.skip("not UTF-8", "notes.txt:1")
        >>> stats.summary()
        ' (1 record skipped, e.g. notes.txt:1: not UTF-8); re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8)'
        """
        n = self.total_skipped
        if not n:
            return ""
        text = f" ({n:,} record{'' if n == 1 else 's'} skipped, e.g. {'; '.join(self.examples[:3])})"
        if set(self.skipped) <= {INVALID_JSON, NOT_OBJECT}:  # a text, a CSV or a JSON array read as JSON Lines
            return text + "; it is not JSON Lines (one JSON object per line): leave --format out to detect its format"
        encoding = next((r for r in ENCODINGS if r in self.skipped), None)
        return text + (f"; re-encode it as UTF-8 (e.g. iconv -f {ENCODINGS[encoding]} -t utf-8)" if encoding else "")


# A reader's skip reason for text in another encoding -> what iconv is told it is (latin-1 is the usual guess).
NOT_UTF8, UTF16 = "not UTF-8", "UTF-16, not UTF-8"
INVALID_JSON, NOT_OBJECT = "invalid or truncated JSON", "not a JSON object"  # a JSON Lines reader's skip reasons
BINARY = "a binary file (it holds NUL bytes), not text"  # no iconv hint: there is no encoding to fix
ENCODINGS = {UTF16: "utf-16", NOT_UTF8: "latin1"}
