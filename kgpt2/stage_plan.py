"""The stage plan: which training articles each stage takes.

The seed project trained on 10 articles, then the next 10,000, then the next
80,000, then the rest. A plan is a list of article counts (ints), fractions
of the train split (floats in (0, 1]) or "rest"; stage k takes the next
articles after stage k-1's.

    >>> from kgpt2.stage_plan import plan_stages
    >>> [(s.first, s.end) for s in plan_stages([10, 0.5, "rest"], 100)]
    [(0, 10), (10, 60), (60, 100)]
    >>> [(s.first, s.end) for s in plan_stages([10, 10000, "rest"], 100, oversize="scale")]
    [(0, 1), (1, 99), (99, 100)]
"""

from __future__ import annotations

from dataclasses import dataclass

from kgpt2.errors import UserError


@dataclass(frozen=True)
class Stage:
    index: int
    first: int  # first article (index into the train split)
    end: int  # one past the last article

    @property
    def num_articles(self) -> int:
        return self.end - self.first

    @property
    def name(self) -> str:
        return f"stage-{self.index + 1}"


def _count(item, total: int, where: str) -> int | None:
    if item == "rest":
        return None
    if isinstance(item, bool) or not isinstance(item, (int, float)):
        raise UserError(f"{where} must be an article count, a fraction in (0, 1] or \"rest\", got {item!r}")
    if isinstance(item, float):
        if not 0 < item <= 1:
            raise UserError(f"{where} is a fraction {item}, which must be in (0, 1]")
        return max(1, round(item * total))
    if item < 1:
        raise UserError(f"{where} must take at least one article, got {item}")
    return item


def plan_stages(plan: list, total_articles: int, oversize: str = "reject") -> list[Stage]:
    """Resolve a plan against a train split of `total_articles` articles."""
    if not plan:
        raise UserError("train.stages is empty; give at least one stage, e.g. [\"rest\"]")
    if total_articles < 1:
        raise UserError("the train split holds no articles")
    if "rest" in plan[:-1]:
        raise UserError("\"rest\" may only be the last stage of train.stages")
    counts = [_count(item, total_articles, f"train.stages[{i}]") for i, item in enumerate(plan)]
    fixed = sum(c for c in counts if c is not None)
    needed = fixed + (1 if counts[-1] is None else 0)
    if needed > total_articles:
        if oversize != "scale":
            raise UserError(
                f"the stage plan {plan} needs {needed} training articles but the shards hold "
                f"{total_articles}; shrink it, or set train.oversize = \"scale\""
            )
        # Shrink every fixed stage in proportion, keeping >= 1 article each
        # and one article for a trailing "rest".
        room = total_articles - (1 if counts[-1] is None else 0)
        if room < sum(c is not None for c in counts):
            raise UserError(f"{total_articles} training articles are too few for {len(plan)} stages")
        scaled = [None if c is None else max(1, int(c * room / fixed)) for c in counts]
        while sum(c for c in scaled if c is not None) > room:  # rounding overshoot
            i = max((i for i, c in enumerate(scaled) if c is not None), key=lambda i: scaled[i])
            scaled[i] -= 1
        counts = scaled
    stages, first = [], 0
    for i, c in enumerate(counts):
        end = total_articles if c is None else first + c
        stages.append(Stage(i, first, end))
        first = end
    return stages
