"""Staged training: `fit` a KerasHub GPT2CausalLM stage by stage, resumably.

`train(cfg)` reads as the recipe it runs (names as in torchtune's recipes):

1. `Trainer.setup`: check the config, open the shards, resolve the stage plan
   against the train split, pick the device (`keras.device` scope, or
   `keras.distribution.DataParallel` over `train.devices`) and its precision,
   find the newest checkpoint and check the run may resume from it;
2. `Trainer.build`: the model (preset + LoRA) and AdamW with warmup + cosine
   over the global step count of *all* stages (kgpt2.training.optimizer);
3. `Trainer.resume`: restore the newest checkpoint (weights, optimizer, RNG
   states) and return the `Cursor` (stage, epoch, batch, global step) it saved;
   then `Trainer.record` writes config.json (and what this call changed):
   a call that fails before its checkpoint is restored leaves the run as it was;
4. `Trainer.run_stage`: `model.fit` the stage's batches from the cursor on,
   one `fit` call per checkpoint / evaluation interval;
5. `Trainer.end_stage`: validation metrics, a checkpoint, the merged
   `.weights.h5` export, the stage table and the plots.

The cursor (kgpt2.training.cursor) is a value passed from step to step and returned;
every checkpoint records it. An interrupted run restarted with the same config
continues at the exact next batch and ends with the same weights as an
uninterrupted one. File names come from `kgpt2.run.Run`.

A finished (or stopped) run can be trained further with another plan: more
stages, more epochs, new shards made with the same tokenizer, a longer
`max_steps`. The step count and optimizer state carry on; the learning rate
follows warmup + cosine over the new total step count, the curve the run
would have had with the longer plan from the start (no second warmup); the
change is recorded in config.json's `continuations`. On new shards, or a
plan that differs in stages already trained, the new plan's stages run
after the finished ones (numbered on from them); more epochs on a finished
one-stage run train its stage on. What the checkpoints depend on (model
shape, tokenizer, LoRA, batch size) cannot change (kgpt2.training.continuation).
`train.init_from` starts a new run from another run's weights instead.

    >>> from kgpt2.train import Cursor  # kgpt2.training.cursor's
    >>> Cursor(stage=1, epoch=0, batch=4, step=12).advanced(8, per_epoch=10, first=4)
    Cursor(stage=1, epoch=1, batch=2, step=20)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import platform
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import keras

from kgpt2.config import Config
from kgpt2.data.batches import EpochBatches, to_dataset
from kgpt2.data.shards import empty_splits_note
from kgpt2.data.stage_plan import plan_stages
from kgpt2.errors import UserError, is_out_of_memory, os_error_sentence, out_of_memory_sentence
from kgpt2.lock import RunLock
from kgpt2.model.models import build_causal_lm
from kgpt2.model.packed_attention import for_windows
from kgpt2.model.scratch import resolve_scratch
from kgpt2.reports import counted, short, shown
from kgpt2.run import Run
from kgpt2.run_config import continuation_record
from kgpt2.training.checkpoints import (
    WEIGHTS_ONLY,
    Checkpoint,
    CheckpointManager,
    current_versions,
    fault_point,
    max_steps_stop,
)
from kgpt2.training.continuation import (
    check_batch_order,
    check_max_steps,
    check_resumable,
    init_checkpoint,
    placed_plan,
    plan_left,
)
from kgpt2.training.cursor import Cursor
from kgpt2.training.devices import dtype_policy, resolve_device
from kgpt2.training.distribution import is_writer, plan_distribution, process_count, start_processes
from kgpt2.training.metrics import compile_for_training, evaluation_model
from kgpt2.training.model_summary import model_line, warn_if_too_big
from kgpt2.training.optimizer import build_optimizer, make_optimizer
from kgpt2.training.periodic_eval import PeriodicEval, plot_evals
from kgpt2.training.progress_lines import ProgressLines
from kgpt2.training.run_logs import StepLog, stage_table_behind, write_stage_table
from kgpt2.training.run_plot import plot_run
from kgpt2.training.train_inputs import check_inputs
from kgpt2.training.training_data import (
    describe_padding,
    describe_plan,  # noqa: F401  (kgpt2.train.describe_plan, as notebooks import it)
    plan_steps,
    stage_batches,
    stage_outcome,
    stage_progress,
)
from kgpt2.training.validation import evaluate_split

log = logging.getLogger("kgpt2")


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    stages: list = field(default_factory=list)  # per-stage validation metrics
    checkpoint: str = ""
    start_step: int = 0  # where this call began (the resumed checkpoint's step)
    # How a finished run trains one more pass: another stage of one epoch, or (a plan of one stage, where
    # another `train.stages=["rest"]` is the plan it has) one more epoch of it.
    one_more_pass: str = "as a new stage ('train.stages=[\"rest\"]' train.epochs=1)"
    max_steps_cut: bool = False  # train.max_steps ended the plan early: a higher one trains on
    stopped_in: str = ""  # where train.max_steps stopped a stage before its end: "stage 3, after 2 of 12 batches"


def train(cfg: Config, verbose="auto", require_checkpoint: bool = False) -> TrainResult:
    """Train `cfg`'s run stage by stage, resuming from its newest checkpoint.

    `verbose`: 0 quiet, 1 Keras' live bar, 2 (a log) kgpt2's own progress lines only; "auto" picks 1 or 2."""
    trainer = Trainer(cfg, verbose)
    try:
        trainer.setup(require_checkpoint)  # takes the run's lock
        if trainer.finished:  # nothing more to train: no model is built and nothing claims to resume
            return trainer.finished_result()
        with trainer.scope():
            trainer.build()
            cursor = trainer.resume()
            trainer.record()  # only now: a call that fails before its checkpoint is restored leaves the run as it was
            for stage in trainer.stages[cursor.stage - trainer.stage_offset:]:
                if cursor.step >= trainer.total_steps:  # train.max_steps reached in an earlier stage
                    break
                cursor = trainer.run_stage(stage, cursor)
                cursor = trainer.end_stage(stage, cursor)
        return trainer.result(cursor)
    except OSError as e:  # a read-only run folder, a full disk, a file where a folder should be
        raise UserError(os_error_sentence(e, f"training run '{cfg.run_dir}'") + trainer.last_good()) from None
    except Exception as e:  # noqa: BLE001 - only running out of memory becomes a sentence; the rest is re-raised
        if not is_out_of_memory(e):
            raise
        device = getattr(trainer, "device", None)
        raise UserError(out_of_memory_sentence(e, f"training run '{cfg.run_dir}'", bool(device and device.is_gpu))
                        + trainer.last_good()) from None
    finally:
        trainer.lock.release()


class Trainer:
    """One training run's parts, built in `setup` and `build`, used by the steps of `train`."""

    def __init__(self, cfg: Config, verbose="auto"):
        if verbose == "auto":  # Keras' live bar on a terminal or in a notebook; in logs kgpt2's lines only (2)
            verbose = 1 if sys.stdout.isatty() or "ipykernel" in sys.modules else 2
        self.cfg, self.verbose = cfg, verbose
        self.stage_metrics: list = []
        self.periodic: PeriodicEval | None = None
        self.lock = RunLock(cfg.run_dir)  # held from setup to the end of `train`
        # A continuation on new shards or another plan runs its stages after
        # the ones finished: the stage and step counts where it began.
        self.stage_offset, self.step_offset = 0, 0
        self.reopened: Cursor | None = None  # a finished one-stage run whose plan grew (setup)
        self.finished = False  # a finished run whose plan did not grow (setup): nothing to train
        self.continuation: dict | None = None  # this call's changes to the run's settings (setup), for `record`

    # -- 1. setup: everything a user can get wrong is checked before any work starts
    def setup(self, require_checkpoint: bool = False) -> None:
        cfg = self.cfg
        start_processes()  # several hosts: join them before JAX lists devices (KERAS_DISTRIBUTION_* variables)
        cfg, self.tokenizer, self.shards = check_inputs(cfg)
        self.init_from = init_checkpoint(cfg, self.tokenizer)
        # The device, the distribution and the plan before the run folder is made: a Colab runtime without a GPU
        # left a run folder holding only a copy of the preset.
        self.device = resolve_device(cfg.train.device)
        self.policy = self.device.policy(cfg.train.precision)
        self.parallel = plan_distribution(cfg.train)  # train.devices (replicated) or train.mesh (sharded)
        self.split = self.shards.split("train")
        if self.split.num_articles == 0 and (note := empty_splits_note(self.shards.manifest)):
            raise UserError(f"the shards in {cfg.data.shards}: {note}")
        self.stages = plan_stages(cfg.train.stages, self.split.num_articles, cfg.train.oversize)
        log.info("stage plan %s: %s articles (%s)", cfg.train.stages, [s.num_articles for s in self.stages],
                 self.stages.why)
        if cfg.train.eval_batches and self.shards.split("validation").num_articles == 0:
            asked = self.shards.manifest.get("options", {}).get("splits", "auto")  # --splits train: no note
            log.warning("the shards in %s: %s", cfg.data.shards, empty_splits_note(self.shards.manifest) or
                        f"validation holds no articles (prepared with --splits {asked}): no validation loss")
        self.run = Run.of(cfg)
        if is_writer():  # the one writing process of a (multi-host) run holds its lock
            self.lock = self.run.lock().acquire()  # before anything is read or written in the run
        self.cfg = cfg = resolve_scratch(cfg)  # a fresh GPT-2 saved once as <run>/preset, for preset "scratch"
        if is_writer():  # a local preset / tokenizer outside the run is copied in (once): the run travels
            self.cfg = cfg = self.run.adopt(cfg)
        self.store = self.run.checkpoints(cfg.train.keep_last)
        old_config = self.run.config().to_dict() if self.run.exists() else None
        self.latest = self._checkpoint_to_resume(require_checkpoint)
        self.epochs, self.total_steps = plan_steps(cfg, self.split, self.stages, done=self.step_offset)
        if self.latest is not None and old_config is not None:
            self.continuation = continuation_record(old_config, cfg.to_dict(), self.latest.step)
        self.reopened = self._reopen_finished_stage((self.continuation or {}).get("changed"))  # may refuse it
        # A call that trains nothing changes nothing (a train.max_steps kept from it cut later stages); the others
        # record their changes once their checkpoint is restored (`record`).
        if self.finished and self.continuation:
            log.info("nothing to train, so config.json keeps its settings (not recorded: %s)", self._changes())
        log.info("device: %s (%s), precision %s, backend %s", self.device.keras_name, self.device.description,
                 self.policy, keras.backend.backend())
        if self.parallel:
            log.info(self.parallel.describe())
        keras.utils.set_random_seed(cfg.seed)

    def _changes(self) -> str:
        """This call's changes to the run's settings, as a sentence's part."""
        changed = self.continuation["changed"] if self.continuation else {}
        return "; ".join(f"{k} {shown(a)} -> {shown(b)}" for k, (a, b) in changed.items())

    def _checkpoint_to_resume(self, require_checkpoint: bool) -> Checkpoint | None:
        newest = self.store.latest()  # one listing of the run directory
        if require_checkpoint and newest is None:
            raise UserError(f"--resume was asked for, but run '{self.run.path}' has no checkpoint to resume from")
        if newest is not None and not self.cfg.train.resume:
            raise UserError(f"run '{self.run.path}' already has checkpoints; resume it, or choose a new run name")
        if newest is not None:
            check_resumable(newest.state, self.cfg)
            check_max_steps(self.cfg, newest.step, self.run.path)
            self._place_plan(newest.state)
        return newest

    def _place_plan(self, state: dict) -> None:
        """Where this config's plan goes on a run that has checkpoints: in place, or after its finished stages."""
        self.stage_offset, self.step_offset, self.stages = placed_plan(
            state, self.cfg, self.stages, self.shards.manifest["content_hash"], self.run.path,
            [c.state for c in self.store.list() if c.state.get("stage_end")])

    def _reopen_finished_stage(self, changed: dict | None) -> Cursor | None:
        """Where a finished one-stage run trains on when its plan grew (continuation.plan_left); else None."""
        state = self.latest.state if self.latest is not None else {}
        if state.get("stopped") == "max_steps" and self.total_steps <= self.latest.step:  # stopped in a stage
            log.info("run %s stopped at train.max_steps in %s: nothing more to train", self.run.path, _stopped_in(state))
            self.finished = True
            return None
        left = plan_left(state, self.stages, self.stage_offset, self.total_steps, self.cfg.train.epochs, self.run.path,
                         changed)
        self.finished = left == "nothing"
        if left != "reopen":
            return None
        stage = self.stages[-1]
        epoch, batch = divmod(self.latest.step - self.step_offset, len(stage_batches(self.cfg, self.split, stage, 0)))
        check_batch_order(changed or {}, self.run.path, stage.index, epoch, batch)  # train.max_steps cut an epoch
        log.info("%s trains on from epoch %d, batch %d to step %d", stage.name, epoch + 1, batch, self.total_steps)
        return Cursor(stage=stage.index, epoch=epoch, batch=batch, step=self.latest.step)

    def scope(self) -> contextlib.ExitStack:
        """The run's precision for every model built inside, on its device(s); the caller's global policy is kept."""
        stack = contextlib.ExitStack()
        stack.enter_context(dtype_policy(self.policy))
        stack.enter_context(self.parallel.scope() if self.parallel else self.device.scope())
        return stack

    # -- 2. build: model and optimizer
    def build(self) -> None:
        cfg = self.cfg
        self.model = build_causal_lm(cfg)
        # What `fit` trains: the model itself, or (packed examples) a wrapper over the same variables
        # that confines attention to each example; checkpoints and exports hold `self.model`.
        self.fit_model = for_windows(self.model, cfg.data.windows)
        self.optimizer, self.schedule = make_optimizer(cfg, self.total_steps)
        compile_for_training(self.fit_model, cfg, self.optimizer, self.device, self.model.backbone.hidden_dim)
        build_optimizer(self.fit_model.optimizer, self.model)
        # validation's exact token loss, off the training step, on the same kind of windows
        self.evaluator = evaluation_model(self.model, cfg.data.windows)
        log.info("%s", model_line(cfg, self.model))
        warn_if_too_big(cfg, self.model, self.device.is_gpu)  # before the first step compiles

    def record(self) -> None:
        """config.json: the run's settings, and this call's changes to them (`continuations`)."""
        if is_writer():  # one process of a multi-host run writes the run's files
            self.run.save_config(self.cfg, self.continuation)
        if self.continuation:
            log.info("continuing run %s at step %d: %s", self.run.path, self.latest.step, self._changes())

    # -- 3. resume: the newest checkpoint's weights, optimizer and cursor
    def resume(self) -> Cursor:
        cursor = Cursor()
        self.store.remove_leftovers()  # of a killed earlier process; the lock says none is live
        if self.latest is not None:
            # fit_model.optimizer: under mixed_float16 Keras wraps ours in a LossScaleOptimizer, whose scale is saved too
            state = CheckpointManager.restore(self.model, self.latest, self.fit_model.optimizer)
            cursor = Cursor.from_state(state)
            self.stage_metrics = state.get("stage_metrics", [])
            if state.get("stopped") == "max_steps":  # its stage trains on: the row is written again at its end
                self.stage_metrics = self.stage_metrics[:-1]
            if self.reopened is not None:  # its stage row is written again at the stage's new end
                cursor, self.stage_metrics = self.reopened, self.stage_metrics[:-1]
            log.info("resuming from %s: stage %d, epoch %d, batch %d (global step %d)", self.latest.id,
                     cursor.stage + 1, cursor.epoch + 1, cursor.batch, cursor.step)
            for path in self.store.publish_exports():  # a kill between a stage end and its export
                log.info("wrote %s again from its stage-end checkpoint", path.name)
        elif self.init_from is not None:  # another run's weights (adapter included), a fresh optimizer
            CheckpointManager.restore(self.model, self.init_from, only=WEIGHTS_ONLY)
            log.info("starting from %s of run %s", self.init_from.id, self.init_from.path.parent)
        steps_csv = self.run.steps_log if is_writer() else Path(tempfile.mkdtemp(prefix="kgpt2-steps-")) / "steps.csv"
        self.steps_log = StepLog(steps_csv, truncate_after=cursor.step, tensorboard_dir=self.run.tensorboard_dir)
        if self.cfg.train.eval_every > 0:  # nanoGPT-style evaluation and best checkpoint
            self.periodic = PeriodicEval(self.run.path, self.cfg.train.eval_every, cursor.step,
                                         evaluate=self._evaluate, keep_best=self.cfg.train.keep_best)
            self.periodic.before_training(cursor.step)
        return cursor

    def _evaluate(self, split_name: str) -> dict:
        return evaluate_split(self.evaluator, self.cfg, self.shards, split_name, self.cfg.train.eval_batches)

    # -- 4. run_stage: fit from the cursor to the stage end, one `fit` per interval
    def run_stage(self, stage, cursor: Cursor) -> Cursor:
        """Train `stage` from `cursor` on; return the cursor at its end (or at train.max_steps).

        One `fit` call runs from one checkpoint/evaluation point to the next,
        across epochs; checkpoints and evaluations happen between calls, so no
        per-step hook makes Keras wait for every step (the step logger is async-safe).
        """
        lo, hi = self.split.token_range(stage.first, stage.end)
        log.info("%s/%d: articles %d..%d (%s, %s tokens)", stage.name, self.stage_offset + len(self.stages),
                 stage.first, stage.end - 1, counted(stage.num_articles, "article"), f"{hi - lo:,}")
        first = stage_batches(self.cfg, self.split, stage, 0)
        self.per_epoch = per_epoch = len(first)  # every epoch permutes the same windows (end_stage counts them)
        self.padding = describe_padding(self.cfg, self.split, stage, first)
        stage_end = per_epoch * self.epochs
        if self.epochs > 1 and cursor.position(per_epoch) < stage_end:
            log.info("%s: %d epochs of %s", stage.name, self.epochs, counted(per_epoch, "batch", "batches"))
        while cursor.position(per_epoch) < stage_end and cursor.step < self.total_steps:
            position = cursor.position(per_epoch)
            n = self._segment_length(cursor, stage_end - position)
            self._fit(stage, cursor, per_epoch, position, n)
            cursor = cursor.advanced(n, per_epoch, position)
            ends_stage = position + n >= stage_end or cursor.step >= self.total_steps  # end_stage saves it
            every = self.cfg.train.checkpoint_every
            if every and cursor.step % every == 0 and not ends_stage:
                self.save_checkpoint(cursor, stage_end=False)
            if self.periodic is not None:
                self.periodic.after_steps(cursor.step, save=lambda: self._checkpoint_at(cursor))
        return cursor

    def _segment_length(self, cursor: Cursor, batches_left: int) -> int:
        """Steps to the next checkpoint or evaluation point, the stage end or train.max_steps."""
        n = min(batches_left, self.total_steps - cursor.step)
        every = [e for e in (self.cfg.train.checkpoint_every, self.cfg.train.eval_every) if e > 0]
        return min([n] + [e - cursor.step % e for e in every])

    def _fit(self, stage, cursor: Cursor, per_epoch: int, position: int, n: int) -> None:
        """One `model.fit` over stage positions [position, position + n), epochs crossed as needed."""
        cfg, split = self.cfg, self.split
        source = EpochBatches(lambda e: stage_batches(cfg, split, stage, e), per_epoch, position, position + n)
        tokens_per_batch = cfg.train.batch_size * cfg.data.sequence_length
        callbacks = [self.steps_log.callback(cursor.step, self.schedule, stage.index, tokens_per_batch,
                                             paddings=source.batch_paddings())]
        if self.verbose:  # Keras counts this fit's steps only (1/25, again at every checkpoint): say where they sit
            steps = f"step {cursor.step + 1}" if n == 1 else f"steps {cursor.step + 1}..{cursor.step + n}"
            log.info("%s/%d, epoch %d/%d: %s of %d", stage.name, self.stage_offset + len(self.stages),
                     position // per_epoch + 1, self.epochs, steps, self.total_steps)
        if self.verbose == 2:  # a log: Keras' line would come only at the fit's end, counting its steps, on stdout
            callbacks.append(ProgressLines(stage.name, cursor.step, self.total_steps, tokens_per_batch, at_end=True))
        self.fit_model.fit(to_dataset(source), epochs=1, verbose=0 if self.verbose == 2 else self.verbose,
                           shuffle=False, callbacks=callbacks)

    # -- 5. end_stage: validation, checkpoint, export, tables, plots
    def end_stage(self, stage, cursor: Cursor) -> Cursor:
        metrics = self._evaluate("validation")
        progress = stage_progress(stage, cursor.position(self.per_epoch), self.per_epoch, self.epochs)
        metrics.update({"stage": stage.index + 1, **progress, "step": cursor.step})
        metrics.update(self.padding)  # empty for token-stream windows
        self.stage_metrics.append(metrics)
        last = stage.index == self.stages[-1].index
        if metrics["batches"] < metrics["of_batches"] and (self.cfg.train.epochs or not last):
            # train.max_steps stopped the stage (with train.epochs = 0 in the plan's last stage, that is the plan's
            # end): the cursor stays in it, so a higher max_steps trains it on; no stage end, and no
            # stage-N.weights.h5 holding part of it
            ckpt = self.save_checkpoint(cursor, stage_end=False, stopped="max_steps")
            log.info("%s %s: %s -> %s (in %s; %s comes at its end)", stage.name, stage_outcome(metrics), _fmt(metrics),
                     ckpt.id, stage.name, self.run.stage_export(stage.name).name)
            self._write_tables()
            return cursor
        cursor = dataclasses.replace(cursor, stage=stage.index + 1, epoch=0, batch=0)
        # The export is written inside the stage-end checkpoint, then linked into the run folder.
        ckpt = self.save_checkpoint(cursor, stage_end=True, export=self.run.stage_export(stage.name).name)
        fault_point("after-checkpoint")
        if process_count() > 1:  # the merged export is not written by a multi-host run (kgpt2.training.checkpoints)
            log.info("%s: several processes; export the stage from %s on one host (kgpt2 export)", stage.name, ckpt.id)
        if is_writer():  # one process of a multi-host run writes the run's files
            self.store.publish_exports()
        self._write_tables()
        log.info("%s %s: %s -> %s", stage.name, stage_outcome(metrics), _fmt(metrics), ckpt.id)
        return cursor

    def _tables_again(self, metrics: list) -> None:
        """A kill between the run's last checkpoint and its tables (stages.json|csv, plots) left them behind it:
        written again from the checkpoint's rows, so a run told "trained nothing" has them."""
        if metrics and stage_table_behind(self.run.path, metrics):
            self.stage_metrics = metrics
            self._write_tables()
            log.info("wrote %s again from %s", self.run.stages_json.name, self.latest.id)

    def _write_tables(self) -> None:
        """stages.json|csv and the plots, by the one process of a multi-host run that writes the run's files."""
        if is_writer():
            write_stage_table(self.run.path, self.stage_metrics)
            plot_run(self.run.path)
            if self.periodic is not None:
                plot_evals(self.run.path)

    # -- save_checkpoint: the cursor and everything a resume checks
    def save_checkpoint(self, cursor: Cursor, stage_end: bool, export: str | None = None,
                        stopped: str | None = None) -> Checkpoint:
        """`stopped`: "max_steps" where train.max_steps stopped a stage before its end (the cursor in it)."""
        cfg = self.cfg
        state = dict(dataclasses.asdict(cursor), stage_end=stage_end, stopped=stopped, stage_metrics=self.stage_metrics,
                     total_steps=self.total_steps, signature=cfg.model_signature(),
                     config_hash=cfg.hash(), shards=self.shards.manifest["content_hash"],
                     stages=cfg.train.stages, stage_ends=[s.end for s in self.stages], epochs=cfg.train.epochs, batch_size=cfg.train.batch_size,
                     max_steps=cfg.train.max_steps, tokenizer=self.tokenizer.hash,
                     versions={**current_versions(), "python": platform.python_version()},
                     stage_offset=self.stage_offset, step_offset=self.step_offset, windows=cfg.data.windows,
                     learning_rate=float(self.schedule(cursor.step)))
        return self.store.save(self.model, self.fit_model.optimizer, state, export=export)

    def _checkpoint_at(self, cursor: Cursor) -> Checkpoint:
        """The checkpoint at the cursor's step: the one just saved there, or a new one (the best, kept)."""
        if self.store.path_for(cursor.step).is_dir():
            return self.store.get(str(cursor.step))
        return self.save_checkpoint(cursor, stage_end=False)

    def last_good(self) -> str:
        """"; the last good checkpoint ckpt-N is intact", for an error message."""
        store = getattr(self, "store", None)
        last = store.newest_intact() if store is not None else None
        return f" (the last good checkpoint {last.id} is intact)" if last else ""

    def result(self, cursor: Cursor) -> TrainResult:
        latest = self.store.latest()
        return TrainResult(self.run.path, cursor.step, self.stage_metrics, latest.id if latest else "",
                           start_step=self.latest.step if self.latest is not None else 0,
                           stopped_in=_stopped_in(latest.state) if latest else "")

    def finished_result(self) -> TrainResult:
        """A finished run's result without building its model (setup found nothing to train)."""
        if is_writer():
            self.store.remove_leftovers()  # of a killed earlier process; the lock says none is live
            for path in self.store.publish_exports():  # a kill between the last stage end and its export
                log.info("wrote %s again from its stage-end checkpoint", path.name)
            self._tables_again(self.latest.state.get("stage_metrics") or [])
        state = self.latest.state
        more = f"(train.epochs={self.cfg.train.epochs + 1})" if len(self.stages) == 1 else TrainResult.one_more_pass
        return TrainResult(self.run.path, self.latest.step, state.get("stage_metrics", []), self.latest.id,
                           start_step=self.latest.step, one_more_pass=more,
                           max_steps_cut=0 < self.cfg.train.max_steps <= self.latest.step,
                           stopped_in=_stopped_in(state))


def _stopped_in(state: dict) -> str:
    """Where train.max_steps stopped the stage of checkpoint `state` ("stage 3, after 2 of 12 batches"), or ""."""
    stop = max_steps_stop(state)
    return f"stage {stop[0]}, {stop[1]}" if stop else ""


def _fmt(metrics: dict) -> str:
    """A stage's metrics in its log line (its batches are in `stage_outcome`'s words)."""
    return ", ".join(f"{k} {short(v)}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                     if k not in ("batches", "of_batches"))
