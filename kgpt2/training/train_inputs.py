"""What `kgpt2 train` checks before any work, and its `--dry-run`.

`check_inputs` is every check of a config's inputs a user can get wrong
(data.shards unset or moved, a sequence longer than the model attends to,
shards made with another tokenizer); the trainer's `setup` and `--dry-run`
both call it, so a dry run approves only what the real run would start.

    >>> from kgpt2.config import load_config
    >>> check_inputs(load_config(None))
    Traceback (most recent call last):
    kgpt2.errors.UserError: data.shards is not set: run `kgpt2 prepare` and point data.shards at its output
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from kgpt2.config import Config
from kgpt2.data.shards import ShardSet
from kgpt2.data.stage_plan import StagePlan, plan_stages
from kgpt2.errors import NoNetworkError, UserError
from kgpt2.model.models import check_sequence_length, load_tokenizer, prepare_hint
from kgpt2.model.preset_shape import with_preset_shape
from kgpt2.model.scratch import resolve_scratch
from kgpt2.run import Run, check_trained_tokenizer
from kgpt2.training.continuation import check_max_steps, check_resumable, placed_plan, plan_left
from kgpt2.training.training_data import describe_plan, plan_steps, resolve_windows

log = logging.getLogger("kgpt2")


def check_inputs(cfg: Config, offline: bool = False) -> tuple[Config, object, ShardSet]:
    """(config with data.windows resolved, tokenizer, shards), or the sentence for what a user got wrong in them:
    the checks `kgpt2 train` and its `--dry-run` both make before any work. `offline`: a preset's tokenizer that
    cannot be had (no network) is a warning and None, the shards not checked against it (a dry run before the
    download still shows its plan)."""
    if not cfg.data.shards:
        if cfg.align.data:  # the dpo recipe, say, given to train
            raise UserError("this is an alignment config (it sets align.data, not data.shards): run `kgpt2 "
                            "align` with it")
        raise UserError("data.shards is not set: run `kgpt2 prepare` and point data.shards at its output")
    if cfg.model.quantize and not cfg.lora.enabled:
        raise UserError("a quantised base (model.quantize) is frozen: set lora.enabled = true to train adapters on it")
    cfg = with_preset_shape(cfg)  # a preset's shape is its own: config.json records it
    check_sequence_length(cfg)
    try:
        tokenizer = load_tokenizer(cfg.model)  # an unknown preset is named before the shards are opened
    except NoNetworkError as e:
        if not offline:
            raise
        log.warning("the shards are not checked against the model's tokenizer: %s", e)
        tokenizer = None
    if tokenizer is not None:  # before the shards: they would be blamed for it
        check_trained_tokenizer(cfg, tokenizer)
    if not Path(cfg.data.shards).exists() and Run.of(cfg).exists():  # a run whose shards moved: say where to point
        raise UserError(f"the shards run '{cfg.run_dir}' trains on, '{cfg.data.shards}', are not there any more "
                        f"(moved or deleted): give their new place, kgpt2 train --run {shlex.quote(str(cfg.run_dir))} "
                        "data.shards=NEW_PLACE; or, gone with a runtime's disk, prepare them again there from the "
                        "same source and options with the run's tokenizer (the same articles: the run resumes exactly)")
    shards = ShardSet(cfg.data.shards)
    if tokenizer is not None:
        shards.check_tokenizer(tokenizer, prepare_hint(cfg.model))
    return resolve_windows(cfg, shards.manifest), tokenizer, shards  # windows "auto" -> what config.json names


def dry_run_plan(cfg: Config) -> tuple[StagePlan, dict | None]:
    """`kgpt2 train --dry-run`: the stage plan, after the checks the real run makes before any work (the
    inputs, and what a run with checkpoints may resume or continue with), and where such a run stands (None
    for a new run): its newest checkpoint and the plan's placement after its finished stages."""
    cfg, tokenizer, shards = check_inputs(cfg, offline=True)
    run = Run.of(cfg)
    store = run.checkpoints(cfg.train.keep_last) if run.exists() else None
    newest = store.latest() if store is not None else None
    standing = None  # where the run stands: the table shows what is trained and where `train` resumes (reports)
    if newest is not None:
        if cfg.model.preset == "scratch" and (run.preset_dir / "config.json").is_file():
            cfg = resolve_scratch(cfg)  # the run's own from-scratch preset (there already: nothing is written)
        cfg = run.adopt(cfg, copy=False)  # the run's own copy of a local preset, as the real run compares with
        check_resumable(newest.state, cfg)
        stages = plan_stages(cfg.train.stages, shards.split("train").num_articles, cfg.train.oversize)
        offset, step_offset, placed = placed_plan(newest.state, cfg, stages, shards.manifest["content_hash"], run.path,
                                             [c.state for c in store.list() if c.state.get("stage_end")])
        check_max_steps(cfg, newest.step, run.path)
        total = plan_steps(cfg, shards.split("train"), placed, done=step_offset)[1]
        plan_left(newest.state, placed, offset, total, cfg.train.epochs, run.path)  # refuses what train refuses
        standing = {"run": run.path, "checkpoint": newest.id, "state": newest.state, "stage_offset": offset,
                    "step_offset": step_offset}
    return describe_plan(cfg, done=standing["step_offset"] if standing else 0), standing  # max_steps counts them
