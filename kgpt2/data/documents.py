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
