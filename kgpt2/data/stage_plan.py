"""The stage plan: which training articles each stage takes.

The seed project trained on 10 articles, then the next 10,000, then the next
80,000, then the rest. A plan is a list of article counts (ints), fractions
of the train split (floats in (0, 1] or percentages such as "8%") or "rest"
(last only); stage k takes the next articles after stage k-1's.

A plan that fits the corpus, with a real remainder for "rest" (at least 5%
of the articles), is used as written. One that does not fit, such as the
seed's plan on a 927-article corpus, is refused with `train.oversize =
"reject"`; with "scale" (the default) it becomes a proportional plan of the
same shape: a first stage written as a count under 5% of the corpus is kept
as written (the seed's 10-article smoke stage), "rest" gets a quarter of the
remaining articles (what it got in the seed: 29,914 of 119,924), the other
count stages share the rest in the proportions written, fractions keep
their share, and no stage but that tiny first one gets under 5%.
`plan.why` says which happened, in one sentence.

    >>> from kgpt2.data.stage_plan import plan_stages
    >>> [(s.first, s.end) for s in plan_stages([10, "50%", "rest"], 100)]
    [(0, 10), (10, 60), (60, 100)]
    >>> plan = plan_stages([10, 10000, 80000, "rest"], 927)
    >>> [s.num_articles for s in plan]
    [10, 77, 611, 229]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kgpt2.errors import UserError
from kgpt2.reports import counted

MIN_SHARE = 0.05  # no stage kgpt2 sizes (scaled, or "rest") gets less of the corpus
REST_SHARE = 0.25  # "rest" in a scaled plan: the seed's 29,914 of 119,924 articles
OVERSIZE = ("scale", "reject")


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


class StagePlan(list):
    """The resolved stages (a list of Stage, or of rows describing them) and
    `why`: one sentence on how the plan was read."""

    def __init__(self, stages, why: str):
        super().__init__(stages)
        self.why = why


def _parse(item, where: str) -> tuple[str, float | int | None]:
    """One plan item -> ("count", n), ("fraction", f) or ("rest", None)."""
    if item == "rest":
        return "rest", None
    if isinstance(item, str) and item.strip().endswith("%"):
        try:
            item = float(item.strip()[:-1]) / 100
        except ValueError:
            raise UserError(f"{where} = {item!r} is not a percentage such as \"8%\"") from None
        where = f"{where} (a percentage)"
    if isinstance(item, bool) or not isinstance(item, (int, float)):
        raise UserError(f"{where} must be an article count, a fraction in (0, 1], a percentage "
                        f"such as \"8%\" or \"rest\", got {item!r}")
    if isinstance(item, float):
        if not 0 < item <= 1:
            raise UserError(f"{where} is a fraction {item:g} of the corpus, which must be in (0, 1]")
        return "fraction", item
    if item < 1:
        raise UserError(f"{where} must take at least one article, got {item}")
    return "count", item


def _allocate(weights: list[float], room: int, floor: int) -> list[int]:
    """Split `room` articles in proportion to `weights`, each at least `floor`.

    Stages whose share would fall under the floor get the floor and leave the
    pool; the others share what is left, rounded by largest remainder so the
    counts add up to `room` exactly.
    """
    counts = [0] * len(weights)
    pool = list(range(len(weights)))
    left = room
    while True:
        total = sum(weights[i] for i in pool)
        small = [i for i in pool if weights[i] / total * left < floor]
        if not small:
            break
        for i in small:
            counts[i] = floor
            pool.remove(i)
            left -= floor
    if pool:
        total = sum(weights[i] for i in pool)
        shares = {i: weights[i] / total * left for i in pool}
        for i in pool:
            counts[i] = int(shares[i])
        by_remainder = sorted(pool, key=lambda i: shares[i] - counts[i], reverse=True)
        for i in by_remainder[: left - sum(counts[i] for i in pool)]:
            counts[i] += 1
    return counts


def _scaled(kinds: list, values: list, total: int) -> tuple[list[int], str]:
    """The proportional plan of the same shape, and a phrase saying how it was made."""
    floor = max(1, math.ceil(MIN_SHARE * total))
    tiny_first = kinds[0] == "count" and len(kinds) > 1 and values[0] < MIN_SHARE * total
    counts: list = [None] * len(kinds)
    if tiny_first:
        counts[0] = values[0]
    for i, kind in enumerate(kinds):
        if kind == "fraction":
            counts[i] = max(1, round(values[i] * total))
    flexible = [i for i, c in enumerate(counts) if c is None]
    written_counts = [values[i] for i in flexible if kinds[i] == "count"]
    room = total - sum(c for c in counts if c is not None)
    if room < len(flexible) * floor:
        if floor == 1:
            raise UserError(f"{counted(total, 'training article')} {'is' if total == 1 else 'are'} too few for "
                            f"train.stages' {len(kinds)} stages; train on them in one: 'train.stages=[\"rest\"]'")
        raise UserError(f"the fractions and first stage of train.stages leave {counted(room, 'article')} of {total:,} "
                        f"for {len(flexible)} more stage{'s' if len(flexible) > 1 else ''}, under {MIN_SHARE:.0%} "
                        "of the corpus a stage; lower them")
    rest_weight = REST_SHARE / (1 - REST_SHARE) * sum(written_counts) if written_counts else 1.0
    weights = [rest_weight if kinds[i] == "rest" else values[i] for i in flexible]
    for i, n in zip(flexible, _allocate(weights, room, floor)):
        counts[i] = n
    how = []
    if tiny_first:
        how.append(f"the first stage kept at its {values[0]:,} articles")
    if written_counts:
        ratio = " : ".join(f"{c:,}" for c in written_counts)
        if kinds[-1] == "rest":
            how.append(f"{ratio} kept in ratio on {1 - REST_SHARE:.0%} of the {room:,} articles left to scale, "
                       f"\"rest\" the other {REST_SHARE:.0%}")
        else:
            how.append(f"{ratio} kept in ratio on the {room:,} articles left to scale")
    how.append(f"{'no other stage' if tiny_first else 'no stage'} under {MIN_SHARE:.0%} ({counted(floor, 'article')})")
    return counts, "stages scaled to the plan's shape: " + "; ".join(how)


def check_plan(plan) -> list[tuple]:
    """The plan's items parsed, or a UserError for a plan no corpus could hold (checked when a config is built).

    >>> check_plan([10, "8%", "rest"])
    [('count', 10), ('fraction', 0.08), ('rest', None)]
    """
    if not isinstance(plan, list) or not plan:
        raise UserError(f"train.stages must be a non-empty list, e.g. [10, 10000, \"rest\"]; got {plan!r}")
    parsed = [_parse(item, f"train.stages[{i}]") for i, item in enumerate(plan)]
    if "rest" in [k for k, _ in parsed][:-1]:
        raise UserError("\"rest\" may only be the last stage of train.stages")
    fractions = sum(v for k, v in parsed if k == "fraction")
    if fractions > 1 + 1e-9:
        raise UserError(f"the fractions in train.stages add up to {fractions:.0%} of the corpus, more than all of it")
    return parsed


def plan_stages(plan: list, total_articles: int, oversize: str = "scale") -> StagePlan:
    """Resolve a plan against a train split of `total_articles` articles."""
    if total_articles < 1:
        raise UserError("the train split holds no articles")
    if oversize not in OVERSIZE:
        raise UserError(f"train.oversize must be one of {', '.join(OVERSIZE)}, got {oversize!r}")
    parsed = check_plan(plan)
    kinds, values = [k for k, _ in parsed], [v for _, v in parsed]
    n = total_articles
    written = [max(1, round(v * n)) if k == "fraction" else v for k, v in parsed if k != "rest"]
    has_rest = kinds[-1] == "rest"
    needed = sum(written) + (1 if has_rest else 0)
    rest = n - sum(written) if has_rest else None
    small_rest = has_rest and needed <= n and rest < MIN_SHARE * n
    if needed <= n and not small_rest:
        counts = written + ([rest] if has_rest else [])
        why = f"the plan fits the {counted(n, 'train article')} as written"
        if not has_rest and needed < n:
            why += f"; the last {n - needed:,} articles are not used (end the plan with \"rest\" to use them)"
        return _stages(counts, n, why)
    if needed > n:
        problem = f"the corpus has {n:,} train articles, fewer than the plan's {needed:,}"
    else:
        problem = (f"the plan as written leaves \"rest\" {rest:,} of the {n:,} train articles, "
                   f"under {MIN_SHARE:.0%}")
    if oversize == "reject":
        raise UserError(f"{problem} ({plan}); shrink the plan, or set train.oversize = \"scale\"")
    if "count" not in kinds:
        raise UserError(f"{problem}: give \"rest\" a larger share (train.stages = {plan})")
    counts, how = _scaled(kinds, values, n)
    return _stages(counts, n, f"{problem}: {how}")


def _stages(counts: list[int], total: int, why: str) -> StagePlan:
    stages, first = [], 0
    for i, c in enumerate(counts):
        stages.append(Stage(i, first, first + c))
        first += c
    assert first <= total, (counts, total)
    return StagePlan(stages, why)
