"""Staged training: `fit` a KerasHub GPT2CausalLM stage by stage, resumably.

Read top to bottom, `train(cfg)`:
1. picks the device (`keras.device` scope, or `keras.distribution.DataParallel`
   over `train.devices`: kgpt2.distribution) and its precision policy,
2. opens the shards and resolves the stage plan against the train split,
3. builds the model (preset + LoRA) and AdamW with warmup + cosine over the
   global step count of *all* stages,
4. restores the newest checkpoint when there is one (weights, optimizer,
   RNG states, data cursor) after checking it fits the config,
5. for each remaining stage and epoch, `model.fit`s the batches from the
   cursor on, checkpointing every `checkpoint_every` steps,
6. at each stage end: validation metrics, a checkpoint, a merged
   `.weights.h5` export, the stage table and the loss plot.

An interrupted run restarted with the same config continues at the exact next
batch and ends with the same weights as an uninterrupted one.

    >>> from kgpt2.config import load_config
    >>> from kgpt2.train import train
    >>> # train(load_config("configs/pubmed_lora.toml", ["train.batch_size=4"]))
"""

from __future__ import annotations

import logging
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

import keras

from kgpt2.checkpoints import CheckpointManager
from kgpt2.config import Config, save_config
from kgpt2.data.batches import EpochBatches, WindowBatches, split_options, to_dataset
from kgpt2.data.shards import ShardSet
from kgpt2.devices import dtype_policy, resolve_device
from kgpt2.distribution import plan_data_parallel
from kgpt2.errors import UserError
from kgpt2.metrics import compile_lm, evaluation_model, summarise
from kgpt2.models import build_causal_lm, count_params, load_tokenizer
from kgpt2.run_logs import StepLog, plot_run, write_stage_table
from kgpt2.stage_plan import plan_stages

log = logging.getLogger("kgpt2")


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    stages: list = field(default_factory=list)  # per-stage validation metrics
    checkpoint: str = ""


def make_optimizer(cfg: Config, total_steps: int):
    t = cfg.train
    warmup = min(t.warmup_steps, max(0, total_steps - 1))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else t.learning_rate,
        decay_steps=max(1, total_steps - warmup),
        alpha=t.min_learning_rate / t.learning_rate if t.learning_rate else 0.0,
        warmup_target=t.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=t.weight_decay,
        beta_2=t.beta_2,
        clipnorm=None if t.global_clipnorm else t.clipnorm or None,
        global_clipnorm=t.clipnorm or None if t.global_clipnorm else None,
        gradient_accumulation_steps=t.gradient_accumulation_steps if t.gradient_accumulation_steps > 1 else None,
    )
    if t.no_decay:  # e.g. biases and layer norms, as nanoGPT and HF's Trainer do
        optimizer.exclude_from_weight_decay(var_names=list(t.no_decay))
    return optimizer, schedule


def stage_batches(cfg: Config, split, stage, epoch: int) -> WindowBatches:
    lo, hi = split.token_range(stage.first, stage.end)
    return WindowBatches(split.tokens, lo, hi, sequence_length=cfg.data.sequence_length,
                         batch_size=cfg.train.batch_size, seed=cfg.seed, stage=stage.index,
                         epoch=epoch, shuffle=True,
                         shift=cfg.data.shift_windows,
                         **split_options(split, stage.first, stage.end, cfg.data.loss_on, cfg.data.windows))


def plan_steps(cfg: Config, split, stages) -> tuple[int, int]:
    """(epochs per stage, total steps): the plan, cut at `train.max_steps`.

    `train.epochs = 0` with `max_steps` = as many epochs as the steps need
    (nanoGPT counts iterations, kgpt2 counts passes over permuted windows).
    """
    epochs, max_steps = cfg.train.epochs, cfg.train.max_steps
    if epochs < 0 or max_steps < 0:
        raise UserError("train.epochs and train.max_steps must not be negative")
    if cfg.train.steps_per_execution < 1:
        raise UserError(f"train.steps_per_execution must be at least 1, got {cfg.train.steps_per_execution}")
    per_epoch = sum(len(stage_batches(cfg, split, s, 0)) for s in stages)
    if epochs == 0:
        if not max_steps:
            raise UserError("train.epochs = 0 means \"as many as train.max_steps needs\"; set train.max_steps too")
        epochs = max(1, -(-max_steps // max(1, per_epoch)))
    total = per_epoch * epochs
    return epochs, min(total, max_steps) if max_steps else total


def _versions() -> dict:
    import keras_hub

    return {"keras": keras.__version__, "keras_hub": keras_hub.__version__,
            "backend": keras.backend.backend(), "python": platform.python_version()}


def _differences(old: dict, new: dict) -> str:
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))


def _check_resumable(state: dict, cfg: Config, shards: ShardSet) -> None:
    diffs = _differences(state.get("signature", {}), cfg.model_signature())
    if diffs:
        raise UserError(f"cannot resume run '{cfg.run_dir}': the config changed what its checkpoints hold ({diffs}); use a new run name")
    if state.get("shards") != shards.manifest["content_hash"]:
        raise UserError(f"cannot resume run '{cfg.run_dir}': its shards changed since the checkpoint; use a new run name")
    t = cfg.train
    old_plan = {k: state.get(k) for k in ("stages", "epochs", "batch_size")} | {"max_steps": state.get("max_steps", 0)}
    diffs = _differences(old_plan, {"stages": t.stages, "epochs": t.epochs, "batch_size": t.batch_size, "max_steps": t.max_steps})
    if diffs:
        raise UserError(f"cannot resume run '{cfg.run_dir}': the training plan changed ({diffs}); use a new run name")


def train(cfg: Config, verbose="auto", require_checkpoint: bool = False) -> TrainResult:
    run_dir = cfg.run_dir
    if verbose == "auto":  # a live progress bar on a terminal or in a notebook, one line per fit in logs
        verbose = 1 if sys.stdout.isatty() or "ipykernel" in sys.modules else 2
    # Everything a user can get wrong is checked before any work starts.
    if not cfg.data.shards:
        raise UserError("data.shards is not set: run `kgpt2 prepare` and point data.shards at its output")
    if cfg.model.quantize and not cfg.lora.enabled:
        raise UserError("a quantised base (model.quantize) is frozen: set lora.enabled = true to train adapters on it")
    tokenizer = load_tokenizer(cfg.model)
    shards = ShardSet(cfg.data.shards)
    shards.check_tokenizer(tokenizer)
    if cfg.model.preset == "scratch":  # a fresh GPT-2, saved once as <run>/preset (kgpt2.pretrain)
        from kgpt2.pretrain import resolve_scratch

        cfg = resolve_scratch(cfg)
        run_dir = cfg.run_dir
    device = resolve_device(cfg.train.device)
    policy = device.policy(cfg.train.precision)
    parallel = plan_data_parallel(cfg.train.devices, cfg.train.batch_size, cfg.train.device)
    split = shards.split("train")
    stages = plan_stages(cfg.train.stages, split.num_articles, cfg.train.oversize)
    epochs, total_steps = plan_steps(cfg, split, stages)

    ckpts = CheckpointManager(run_dir, cfg.train.keep_last)
    newest = ckpts.latest()  # one listing of the run directory
    if require_checkpoint and newest is None:
        raise UserError(f"--resume was asked for, but run '{run_dir}' has no checkpoint to resume from")
    latest = newest if cfg.train.resume else None
    if latest is None and newest is not None:
        raise UserError(f"run '{run_dir}' already has checkpoints; resume it, or choose a new run name")
    if latest is not None:
        _check_resumable(latest.state, cfg, shards)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.json")
    log.info("device: %s (%s), precision %s, backend %s", device.keras_name, device.description, policy, keras.backend.backend())
    if parallel:
        log.info(parallel.describe())
    keras.utils.set_random_seed(cfg.seed)

    # The run's precision for every model built below, without changing the caller's global policy.
    with dtype_policy(policy), parallel.scope() if parallel else device.scope():
        model = build_causal_lm(cfg)
        optimizer, schedule = make_optimizer(cfg, total_steps)
        compile_lm(model, optimizer, token_loss=False, steps_per_execution=cfg.train.steps_per_execution)
        evaluator = evaluation_model(model)  # validation's exact token loss, off the training step
        params = count_params(model)
        log.info("model: %s, %s parameters, %s trainable%s", cfg.model.preset, f"{params['total']:,}",
                 f"{params['trainable']:,}", f" (LoRA rank {cfg.lora.rank}, alpha {cfg.lora.alpha})" if cfg.lora.enabled else "")
        _warn_if_too_big(cfg, model, params["total"])  # before the first step compiles
        stage_metrics: list = []
        cursor = {"stage": 0, "epoch": 0, "batch": 0, "step": 0}
        if latest is not None:
            state = CheckpointManager.restore(model, latest, optimizer)
            cursor = {k: state[k] for k in cursor}
            stage_metrics = state.get("stage_metrics", [])
            log.info("resuming from %s: stage %d, epoch %d, batch %d (global step %d)", latest.id,
                     cursor["stage"] + 1, cursor["epoch"] + 1, cursor["batch"], cursor["step"])
        steps_log = StepLog(run_dir / "logs" / "steps.csv", truncate_after=cursor["step"])

        def save(m, stage_end: bool):
            state = dict(cursor, stage_end=stage_end, stage_metrics=stage_metrics,
                         total_steps=total_steps, signature=cfg.model_signature(),
                         config_hash=cfg.hash(), shards=shards.manifest["content_hash"],
                         stages=cfg.train.stages, epochs=cfg.train.epochs, batch_size=cfg.train.batch_size,
                         max_steps=cfg.train.max_steps, versions=_versions())
            return ckpts.save(m, optimizer, state)

        periodic = None
        if cfg.train.eval_every > 0:  # nanoGPT-style evaluation and best checkpoint
            from kgpt2.periodic_eval import PeriodicEval

            periodic = PeriodicEval(
                run_dir, cfg.train.eval_every, cursor, keep_best=cfg.train.keep_best,
                evaluate=lambda name: evaluate_split(evaluator, cfg, shards, name, cfg.train.eval_batches),
                save=lambda m: ckpts.get(str(cursor["step"])) if (run_dir / f"ckpt-{cursor['step']}").is_dir()
                else save(m, stage_end=False))
            periodic.before_training(model)
        # One `fit` call runs from one checkpoint/evaluation point (or stage
        # end) to the next, across epochs; checkpoints and evaluations happen
        # between calls, so no per-step hook makes Keras wait for every step
        # (the step logger is async-safe).
        every = [n for n in (cfg.train.checkpoint_every, cfg.train.eval_every) if n > 0]
        tokens_per_batch = cfg.train.batch_size * cfg.data.sequence_length

        def segment(batches_left: int) -> int:
            n = min(batches_left, total_steps - cursor["step"])
            return min([n] + [e - cursor["step"] % e for e in every])

        for stage in stages[cursor["stage"]:]:
            if cursor["step"] >= total_steps:  # train.max_steps reached in an earlier stage
                break
            lo, hi = split.token_range(stage.first, stage.end)
            log.info("%s/%d: articles %d..%d (%d articles, %s tokens)", stage.name, len(stages),
                     stage.first, stage.end - 1, stage.num_articles, f"{hi - lo:,}")
            first = stage_batches(cfg, split, stage, 0)
            per_epoch = len(first)  # every epoch permutes the same windows
            padding: dict = {}
            if cfg.data.windows == "example":  # padded examples: say what the padding costs
                padding = {"padding": first.padding_fraction(), "truncated": first.truncated}
                log.info("%s: one example per window; %.1f%% of the target positions are padding, "
                         "%d examples truncated", stage.name, 100 * padding["padding"], padding["truncated"])
            position = cursor["epoch"] * per_epoch + cursor["batch"]  # batches of this stage done
            stage_end = per_epoch * epochs
            if epochs > 1 and position < stage_end:
                log.info("%s: %d epochs of %d batches", stage.name, epochs, per_epoch)
            while position < stage_end and cursor["step"] < total_steps:
                n = segment(stage_end - position)
                source = EpochBatches(lambda e, s=stage: stage_batches(cfg, split, s, e), per_epoch, position, position + n)
                model.fit(to_dataset(source), epochs=1, verbose=verbose, shuffle=False,
                          callbacks=[steps_log.callback(cursor["step"], schedule, stage.index, tokens_per_batch)])
                position += n
                cursor["step"] += n
                cursor["epoch"], cursor["batch"] = divmod(position, per_epoch)
                ends_stage = position >= stage_end or cursor["step"] >= total_steps  # saved just below
                if cfg.train.checkpoint_every and cursor["step"] % cfg.train.checkpoint_every == 0 and not ends_stage:
                    save(model, stage_end=False)
                if periodic is not None:
                    periodic.after_steps(model)
            metrics = evaluate_split(evaluator, cfg, shards, "validation", cfg.train.eval_batches)
            metrics.update(stage=stage.index + 1, articles=stage.end, step=cursor["step"])
            metrics.update(padding)  # empty unless one example per window
            stage_metrics.append(metrics)
            cursor.update(stage=stage.index + 1, epoch=0, batch=0)
            ckpt = save(model, stage_end=True)
            export_weights(model, run_dir / f"{stage.name}.weights.h5")
            write_stage_table(run_dir, stage_metrics)
            plot_run(run_dir)
            if cfg.train.eval_every > 0:
                from kgpt2.periodic_eval import plot_evals

                plot_evals(run_dir)
            log.info("%s done: %s -> %s", stage.name, _fmt(metrics), ckpt.id)
    latest = ckpts.latest()
    return TrainResult(run_dir, cursor["step"], stage_metrics, latest.id if latest else "")


def _warn_if_too_big(cfg: Config, model, total_params: int) -> None:
    from kgpt2.memory import check_fits, device_memory_bytes

    b = model.backbone
    mode = ("int8-lora" if cfg.model.quantize == "int8" else "lora") if cfg.lora.enabled else "full"
    warning = check_fits(total_params, mode, cfg.train.batch_size, cfg.data.sequence_length, b.num_layers,
                         b.hidden_dim, b.vocabulary_size, device_memory_bytes())
    if warning:
        log.warning("%s", warning)


def split_batches(cfg: Config, split, max_batches: int | None, batch_size: int | None = None) -> WindowBatches:
    """A whole split in order (no shuffle), with the run's loss mask and windows: what evaluation sees."""
    return WindowBatches(split.tokens, 0, split.num_tokens, sequence_length=cfg.data.sequence_length,
                         batch_size=batch_size or cfg.train.batch_size, seed=cfg.seed, shuffle=False,
                         max_batches=max_batches,
                         **split_options(split, 0, split.num_articles, cfg.data.loss_on, cfg.data.windows))


def evaluate_split(model, cfg: Config, shards: ShardSet, split_name: str, max_batches: int) -> dict:
    """Validation metrics over the first `max_batches` batches of a split (in order)."""
    if max_batches == 0 or split_name not in shards.manifest["splits"]:
        return {}
    split = shards.split(split_name)
    if split.num_articles == 0:
        return {}
    source = split_batches(cfg, split, max_batches if max_batches > 0 else None)
    logs = model.evaluate(to_dataset(source), verbose=0, return_dict=True)
    return summarise(logs)


def export_weights(model, path: Path) -> None:
    """The full model as a plain `.weights.h5`: adapters merged, a quantised base
    dequantised, the original vocabulary size (kgpt2.adapters.merged_backbone)."""
    from kgpt2.adapters import merged_backbone

    tmp = path.with_name(f".tmp-{path.name}")
    merged_backbone(model.backbone).save_weights(str(tmp))
    tmp.replace(path)


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def describe_plan(cfg: Config) -> list[dict]:
    """The resolved stage plan as rows, for `kgpt2 train --dry-run`."""
    shards = ShardSet(cfg.data.shards)
    split = shards.split("train")
    rows = []
    stages = plan_stages(cfg.train.stages, split.num_articles, cfg.train.oversize)
    epochs, total_steps = plan_steps(cfg, split, stages)
    done = 0
    for s in stages:
        lo, hi = split.token_range(s.first, s.end)
        n = len(stage_batches(cfg, split, s, 0))
        steps = max(0, min(n * epochs, total_steps - done))  # train.max_steps may cut it
        done += steps
        rows.append({"stage": s.index + 1, "articles": s.num_articles, "first": s.first,
                     "tokens": hi - lo, "steps_per_epoch": n, "epochs": epochs, "steps": steps})
    return rows
