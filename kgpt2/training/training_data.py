"""What a run trains on: its batches per stage and epoch, its step count, and what padding costs.

`stage_batches(cfg, split, stage, epoch)` is the one batch source of a stage's
epoch (token-stream windows, one example per window, or packed examples, by
`data.windows`), a pure function of the config, the shards and those numbers:
what makes a resume exact. `plan_steps` counts the steps of a plan,
`describe_plan` shows it (`kgpt2 train --dry-run`), `resolve_windows` fixes
`data.windows = "auto"` against the shards before the run's config is saved,
and `describe_padding` is the padding line of the log and the stage table.

    >>> from kgpt2.config import load_config
    >>> from kgpt2.training.training_data import resolve_windows
    >>> cfg = resolve_windows(load_config(None), {"splits": {"train": {"mask": "train.mask.bin"}}})
    >>> cfg.data.windows
    'packed_examples'
"""

from __future__ import annotations

import dataclasses
import logging
import math

from kgpt2.config import Config
from kgpt2.data import batches
from kgpt2.data.batches import PACKED_EXAMPLES, article_batches
from kgpt2.data.shards import ShardSet
from kgpt2.data.stage_plan import StagePlan, plan_stages
from kgpt2.errors import UserError
from kgpt2.training.distribution import local_rows

log = logging.getLogger("kgpt2")


def resolve_windows(cfg: Config, manifest: dict) -> Config:
    """`cfg` with `data.windows = "auto"` made concrete for the shards of `manifest`."""
    windows = batches.resolve_windows(cfg.data.windows, manifest)
    if windows == cfg.data.windows:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, windows=windows))


def stage_batches(cfg: Config, split, stage, epoch: int):
    """The batches of one epoch of a stage (articles stage.first..stage.end), shuffled by (seed, stage, epoch)."""
    return local_rows(article_batches(split, stage.first, stage.end, windows=cfg.data.windows,
                                      loss_on=cfg.data.loss_on, shift=cfg.data.shift_windows,
                                      sequence_length=cfg.data.sequence_length, batch_size=cfg.train.batch_size,
                                      seed=cfg.seed, stage=stage.index, epoch=epoch, shuffle=True))


def describe_padding(cfg: Config, split, stage, source) -> dict:
    """What padding costs in a stage (logged, and kept in the stage table); {} for token-stream windows."""
    windows = cfg.data.windows
    if windows not in ("example", PACKED_EXAMPLES):
        _warn_if_mostly_padding(cfg, stage, source)
        return {}
    padding = {"padding": round(source.padding_fraction(), 4), "truncated": source.truncated}
    if windows == "example":
        log.info("%s: one example per window; %.1f%% of the target positions are padding, %d examples truncated",
                 stage.name, 100 * padding["padding"], padding["truncated"])
        return padding
    alone = article_batches(split, stage.first, stage.end, windows="example", loss_on=cfg.data.loss_on,
                            sequence_length=cfg.data.sequence_length, batch_size=cfg.train.batch_size,
                            seed=cfg.seed, shuffle=False)
    padding.update(padding_one_per_window=round(alone.padding_fraction(), 4),
                   examples_per_window=round(source.examples_per_window(), 2))
    log.info("%s: %.2f examples per window (packed, attention kept within each example); %.1f%% of the "
             "target positions are padding (one example per window: %.1f%%), %d examples truncated", stage.name,
             padding["examples_per_window"], 100 * padding["padding"], 100 * padding["padding_one_per_window"],
             padding["truncated"])
    return padding


def _warn_if_mostly_padding(cfg: Config, stage, source) -> None:
    """A stage of token windows too small for one batch trains mostly on padding (train.batch_size 1,000 on 10
    articles: 90% of the step), at the full step's cost: say so, with a batch size it fills."""
    share = source.padding_fraction()
    if share < 0.5:
        return
    windows = max(1, math.ceil(source.target_tokens() / cfg.data.sequence_length))
    batches = len(source)
    log.warning("%s: %.0f%% of its batches' positions are padding: %d window%s of %d tokens fill %d batch%s of "
                "train.batch_size %d poorly; train.batch_size=%d (or fewer) wastes little", stage.name, 100 * share,
                windows, "" if windows == 1 else "s", cfg.data.sequence_length, batches, "" if batches == 1 else "es",
                cfg.train.batch_size, windows)


def stage_progress(stage, position: int, per_epoch: int, epochs: int) -> dict:
    """What a stage trained, for its row in stages.json|csv: `batches` trained of `of_batches` planned (all epochs),
    and `articles` trained on through it: the stage's end, or for a stage that train.max_steps stopped within its
    first epoch, its articles in proportion to the batches trained (its windows come shuffled).

        >>> from kgpt2.data.stage_plan import plan_stages
        >>> first, second = plan_stages([100, "rest"], 1000)
        >>> stage_progress(second, 40, per_epoch=570, epochs=1)
        {'articles': 163, 'batches': 40, 'of_batches': 570}
    """
    seen = stage.num_articles * min(position, per_epoch) // max(1, per_epoch)
    return {"articles": stage.first + seen, "batches": position, "of_batches": per_epoch * epochs}


def stage_outcome(metrics: dict) -> str:
    """How a stage ended, for its log line: "done", or where train.max_steps stopped it."""
    if metrics["batches"] >= metrics["of_batches"]:
        return "done"
    return f"stopped at train.max_steps after {metrics['batches']:,} of {metrics['of_batches']:,} batches"


def plan_steps(cfg: Config, split, stages, done: int = 0) -> tuple[int, int]:
    """(epochs per stage, total steps): the plan after `done` earlier steps, cut at `train.max_steps`.

    `train.epochs = 0` with `max_steps` = as many epochs as the steps need
    (nanoGPT counts iterations, kgpt2 counts passes over permuted windows).
    """
    epochs, max_steps = cfg.train.epochs, cfg.train.max_steps
    if epochs < 0 or max_steps < 0:
        raise UserError("train.epochs and train.max_steps must not be negative")
    if cfg.train.steps_per_execution < 1:
        raise UserError(f"train.steps_per_execution must be at least 1, got {cfg.train.steps_per_execution}")
    if cfg.train.loss_chunk < 0:
        raise UserError(f"train.loss_chunk must be 0 (the plain loss) or a number of positions, got {cfg.train.loss_chunk}")
    per_epoch = sum(len(stage_batches(cfg, split, s, 0)) for s in stages)
    if epochs == 0:
        if not max_steps:
            raise UserError("train.epochs = 0 means \"as many as train.max_steps needs\"; set train.max_steps too")
        epochs = max(1, -(-(max_steps - done) // max(1, per_epoch)))
    total = done + per_epoch * epochs
    return epochs, min(total, max_steps) if max_steps else total


def describe_plan(cfg: Config, done: int = 0) -> StagePlan:
    """The resolved stage plan as rows (and `.why`), for `kgpt2 train --dry-run`; `done`: the steps of a run's
    finished stages this plan runs after (its step offset), which train.max_steps counts too, as `plan_steps` does
    for the trainer."""
    shards = ShardSet(cfg.data.shards)
    cfg = resolve_windows(cfg, shards.manifest)
    split = shards.split("train")
    rows = []
    stages = plan_stages(cfg.train.stages, split.num_articles, cfg.train.oversize)
    epochs, total_steps = plan_steps(cfg, split, stages, done=done)
    for s in stages:
        lo, hi = split.token_range(s.first, s.end)
        n = len(stage_batches(cfg, split, s, 0))
        steps = max(0, min(n * epochs, total_steps - done))  # train.max_steps may cut it
        done += steps
        rows.append({"stage": s.index + 1, "articles": s.num_articles, "first": s.first,
                     "tokens": hi - lo, "steps_per_epoch": n, "epochs": epochs, "steps": steps})
    return StagePlan(rows, stages.why)
