"""`kgpt2 align`: preference alignment of a GPT-2 (DPO, IPO, hinge, SimPO, ORPO, KTO), resumably.

`align(cfg)` reads as the recipe it runs, in the steps of `kgpt2.train`:

1. `Aligner.setup`: read and encode the preference data (checked before any
   model loads), split off held-out pairs by a hash of the prompt, pick the
   device(s) (`train.devices`) and precision, find the newest checkpoint, or for a new run the
   `align.init_run` checkpoint it starts from (only its weights must verify, as for `kgpt2 generate`);
2. `Aligner.build`: the policy (preset + LoRA, or `align.init_run`'s
   checkpoint), its reference log-probs computed once before any update and
   cached in `<run>/reference.npz` (no second model is held in memory), and
   the optimizer compiled with the `align.loss` of kgpt2.training.preference_losses;
3. `Aligner.resume`: the newest checkpoint's weights, optimizer and step;
4. `Aligner.run`: `fit` from that step on, one call per `train.checkpoint_every`
   interval, a checkpoint after each; the pair order is fixed by the seed,
   so a killed and resumed run ends with the uninterrupted run's weights;
5. `Aligner.finish`: held-out reward accuracy and margins before and after
   (KTO: on held-out examples, kgpt2.training.preference_losses.kto_metrics),
   written to `<run>/align.json` with what the run started from (`start`: the
   `align.init_run` as given and its checkpoint id, or the preset).

The global Keras dtype policy is left as it was (the run's precision is
scoped). TRL's trainers are torch-only; the losses are theirs, in Keras ops.

    >>> from kgpt2.align import AlignPlan
    >>> AlignPlan(steps=10, batch_size=4, checkpoint_every=4).segments(start=0)
    [(0, 4), (4, 8), (8, 10)]

Run it: `kgpt2 align --config dpo` (see docs/instruction_dpo_qlora.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np

from kgpt2 import compat
from kgpt2.config import Config
from kgpt2.data.preference_pairs import (
    NO_PREFERENCE_FILES,
    PairStats,
    content_hash,
    encode_pairs,
    read_pairs,
    read_preferences,
    refuse_unpaired,
)
from kgpt2.errors import UserError
from kgpt2.io import atomic_write_bytes, atomic_write_text
from kgpt2.model.models import build_causal_lm, check_sequence_length, load_tokenizer
from kgpt2.model.preset_shape import with_preset_shape
from kgpt2.reports import counted, shown
from kgpt2.run import BASE, Run, not_a_run, same_files
from kgpt2.training.checkpoints import WEIGHTS_ONLY, Checkpoint, CheckpointManager
from kgpt2.training.continuation import differences
from kgpt2.training.devices import dtype_policy, resolve_device, step_compiler_options
from kgpt2.training.distribution import plan_data_parallel
from kgpt2.training.optimizer import build_optimizer, make_optimizer
from kgpt2.training.preference_losses import PreferenceLoss
from kgpt2.training.preferences import (
    PolicyLogProbs,
    encode_preferences,
    predict_logprobs,
    reference_path,
    score_heldout,
    take,
    targets_for,
)
from kgpt2.training.progress_lines import ProgressLines

__all__ = ["align", "read_pairs", "PairStats", "encode_pairs"]
log = logging.getLogger("kgpt2")
KIND = "align"  # checkpoint state "kind": how evaluate knows an align run


@dataclass(frozen=True)
class AlignPlan:
    steps: int
    batch_size: int
    checkpoint_every: int = 0

    def segments(self, start: int) -> list[tuple[int, int]]:
        """(first, end) steps of each `fit` call from `start`: one per checkpoint interval."""
        every = self.checkpoint_every or self.steps
        bounds = list(range(start - start % every + every, self.steps, every)) + [self.steps]
        out, lo = [], start
        for hi in bounds:
            if hi > lo:
                out.append((lo, hi))
                lo = hi
        return out


def align(cfg: Config, verbose="auto", require_checkpoint: bool = False) -> dict:
    """Align `cfg`'s model on `cfg.align.data`; resume from the newest checkpoint; return <run>/align.json."""
    cfg = _model_of_own_run(cfg)
    cfg = with_preset_shape(cfg)  # a preset's shape is its own (shape keys refused): config.json records it, as train's
    check_sequence_length(cfg)  # before the lock makes the run folder
    if cfg.train.max_steps:  # align counts its own steps: train.max_steps ran the recipe's steps without a word
        raise UserError(f"align counts its optimizer steps with align.steps (now {cfg.align.steps:,}); "
                        f"train.max_steps is kgpt2 train's: set align.steps={cfg.train.max_steps} instead")
    if not cfg.align.data:  # also before the lock: a training config given to align left an empty run folder
        hint = (" This is a training config (it sets data.shards): run `kgpt2 train` with it." if cfg.data.shards
                else "")
        raise UserError(f"{NO_PREFERENCE_FILES}.{hint}")
    if cfg.align.init_run and not Run(cfg.align.init_run).exists() and not _has_checkpoints(cfg):
        # else its model and LoRA are not known yet; a resume needs none of it (its config.json records them)
        recipe_start = (" (the dpo recipe starts from `kgpt2 train --config alpaca`)"
                        if Path(cfg.align.init_run).name == "alpaca" else "")  # the recipe's own init_run
        advice = f"train it first{recipe_start}, or set align.init_run= to start from model.preset"
        refusal = not_a_run(cfg.align.init_run, advice, option="align.init_run",
                            checkpoint_hint="align.init_checkpoint={name} picks this checkpoint")
        raise UserError(f"align.init_run {refusal}")
    with Run.of(cfg).lock():  # one writing process per run (kgpt2.lock)
        aligner = Aligner(cfg, verbose)
        aligner.setup(require_checkpoint)
        done = aligner.finished()
        if done is not None:  # nothing more to do: no model is built and nothing claims to resume
            return done
        with aligner.scope():
            aligner.build()
            step = aligner.resume()
            aligner.run(step)
            return aligner.finish()


class Aligner:
    """One align run's parts, built in `setup` and `build`, used by the steps of `align`."""

    def __init__(self, cfg: Config, verbose="auto"):
        self.cfg, self.verbose = cfg, (2 if verbose == "auto" else verbose)

    # -- 1. setup
    def setup(self, require_checkpoint: bool = False) -> None:
        cfg, a = self.cfg, self.cfg.align  # align() checked the sequence length before taking the lock
        self.run_ = Run.of(cfg)
        self.store = self.run_.checkpoints(cfg.train.keep_last)
        self.latest = self.store.latest()
        if require_checkpoint and self.latest is None:
            raise UserError(f"--resume was asked for, but run '{self.run_.path}' has no checkpoint to resume from")
        if self.latest is not None and not cfg.train.resume:
            raise UserError(f"run '{cfg.run_dir}' already has checkpoints; resume it, or choose a new run name")
        self.stats = PairStats()
        pairs, unpaired = read_preferences(a.data, a.template, self.stats)  # checked before any model loads
        if a.loss != "kto":
            refuse_unpaired(unpaired, a.loss)  # KTO records are refused; votes' single answers skipped
            self.stats.skipped, unpaired = len(unpaired), []
        # Encoded (and the held-out split checked) before the preset is copied in: a refusal leaves no run folder
        self.tokenizer_hash = (tokenizer := load_tokenizer(cfg.model)).hash  # in checkpoints: init_from checks it
        self._encode(pairs, unpaired, tokenizer)
        # the checkpoint a new run starts from, found (and its weights verified) before anything is written;
        # a resume loads its own checkpoint instead: it holds every weight trained
        self.start = _start_checkpoint(cfg, a.init_run, a.init_checkpoint) if a.init_run and not self.latest else None
        self.started_from = self._start_record()  # before adopt: the preset as given, not the run's copy
        # Its own copy of a local preset / tokenizer (often align.init_run's), as `train` makes: the align run then
        # opens wherever it is copied, without the run it started from.
        self.cfg = cfg = self.run_.adopt(cfg)
        self.device = resolve_device(cfg.train.device)
        self.policy_name = self.device.policy(cfg.train.precision)
        self.parallel = plan_data_parallel(cfg.train.devices, cfg.train.batch_size, cfg.train.device)
        self.plan = AlignPlan(a.steps, cfg.train.batch_size, cfg.train.checkpoint_every)
        if self.latest is not None:
            self._check_resumable(self.latest.state)
        self.run_.save_config(cfg)
        if self.parallel:
            log.info(self.parallel.describe())

    def _start_record(self) -> dict | None:
        """What the run started from, kept in each checkpoint and in align.json: the start line is progress (-q hides
        it, as train's), and a resumed run knows it only from its checkpoint (None: one saved before this record)."""
        a = self.cfg.align
        if self.latest is not None:
            return self.latest.state.get("start")
        if not a.init_run:
            return {"preset": self.cfg.model.preset}
        return {"run": a.init_run, "checkpoint": self.start.id if self.start else BASE}  # the run as given

    def finished(self) -> dict | None:
        """The saved align.json of a run that has taken all its steps and written it; None otherwise."""
        if self.latest is None or self.latest.step < self.plan.steps:
            return None
        try:
            result = json.loads(self.run_.align_result.read_text())
        except (OSError, ValueError):  # killed after its last checkpoint, before align.json: finish it
            return None
        if result.get("checkpoint") != self.latest.id:
            return None
        log.info("run %s has taken its %d align steps (%s): nothing more to do; align.json holds its held-out "
                 "metrics", self.run_.path, self.plan.steps, self.latest.id)
        return result

    def _encode(self, pairs: list, unpaired: list, tokenizer) -> None:
        """Held-out rows (by prompt hash) and the training rows (pairs, or KTO examples)."""
        a, stats = self.cfg.align, self.stats
        rows = encode_preferences(self.cfg, pairs, unpaired, tokenizer, stats)
        self.held_x, self.held_labels, self.train_x, self.labels = \
            rows.held_x, rows.held_labels, rows.train_x, rows.train_labels
        n_train, n_held = len(self.labels), len(self.held_labels)
        held = counted(n_held, "held-out " + ("example" if a.loss == "kto" else "pair"))
        labelled = (lambda x, y: {**x, "labels": y}) if a.loss == "kto" else (lambda x, y: x)  # noqa: E731
        self.data_hash = (content_hash(labelled(self.train_x, self.labels)) + "/"
                          + content_hash(labelled(self.held_x, self.held_labels)))
        log.info("preference data: %s read, %s skipped, %d with chosen == rejected dropped, %s skipped (KTO reads "
                 "them), %d too long; %s (%s), %s", counted(stats.read, "record"), counted(stats.ties, "tie"),
                 stats.identical, counted(stats.skipped, "unpaired vote answer"), stats.too_long,
                 counted(n_train, "training row"), a.loss, held)

    def _check_resumable(self, state: dict) -> None:
        old, new = state.get("align_plan", {}), self._plan_record()
        if _same_run_name(old.get("init_run"), new["init_run"]):
            old = {**old, "init_run": new["init_run"]}  # as typed, or resolved from config.json, or moved: one run
        diffs = "; ".join(f"{k}: {shown(old.get(k))} -> {new[k]!r}" for k in new if old.get(k) != new[k])
        if state.get("kind") != KIND:  # a training run's folder: its every align field "changed" (None -> ...)
            raise UserError(f"run '{self.cfg.run_dir}' is a training run, not an align run: align into a new run name "
                            f"(run=NEW_NAME), starting from it with align.init_run={self.cfg.run_dir}")
        if diffs:
            raise UserError(f"cannot resume run '{self.cfg.run_dir}': {diffs}; use a new run name")

    def _plan_record(self) -> dict:
        a = self.cfg.align
        return {"loss": a.loss, "beta": a.beta, "label_smoothing": a.label_smoothing, "simpo_gamma": a.simpo_gamma,
                "steps": a.steps, "batch_size": self.cfg.train.batch_size, "seed": self.cfg.seed,
                "data": self.data_hash, "signature": self.cfg.model_signature(),
                "init_run": a.init_run, "init_checkpoint": a.init_checkpoint}

    def scope(self) -> contextlib.ExitStack:
        """The run's precision and device(s) for everything built inside; the global policy is kept."""
        stack = contextlib.ExitStack()
        stack.enter_context(dtype_policy(self.policy_name))
        stack.enter_context(self.parallel.scope() if self.parallel else self.device.scope())
        return stack

    # -- 2. build: policy, cached reference, optimizer
    def build(self) -> None:
        cfg, a = self.cfg, self.cfg.align
        keras.utils.set_random_seed(cfg.seed)
        self.policy = build_causal_lm(cfg)
        if a.init_run and self.latest is None:
            if self.start is not None:  # None: align.init_checkpoint = "base", the model as built
                CheckpointManager.restore(self.policy, self.start, only=WEIGHTS_ONLY)
            log.info("starting from %s of run %s", self.start.id if self.start else BASE, a.init_run)
        self.model = PolicyLogProbs(self.policy)
        ref_train, ref_held = self._reference()
        self.train_y = targets_for(ref_train, self.train_x, self.labels)
        self.held_y = targets_for(ref_held, self.held_x, self.held_labels)
        self.optimizer, self.schedule = make_optimizer(cfg, a.steps)
        self.model.compile(optimizer=self.optimizer, loss=PreferenceLoss(a.loss, a.beta, a.label_smoothing, a.simpo_gamma))
        build_optimizer(self.model.optimizer, self.policy)
        compat.compile_train_step_with(self.model, step_compiler_options(
            cfg.train, cfg.lora.enabled, self.device, self.policy.backbone.hidden_dim))

    def _reference(self) -> tuple[np.ndarray, np.ndarray]:
        """Log-probs of the policy before any update: computed once, cached in the run folder."""
        path = reference_path(self.run_.path)
        if path.is_file():
            with np.load(path) as cached:
                if str(cached["data"]) == self.data_hash:
                    return cached["train"], cached["heldout"]
            if self.latest is not None:
                raise UserError(f"cannot resume run '{self.cfg.run_dir}': {path.name} was computed on other data")
        bs = self.cfg.train.batch_size
        train = predict_logprobs(self.model, self.train_x, bs)
        held = predict_logprobs(self.model, self.held_x, bs)
        atomic_write_bytes(path, _npz_bytes(train=train, heldout=held, data=np.array(self.data_hash)))
        return train, held

    # -- 3. resume
    def resume(self) -> int:
        if self.latest is None:
            return 0
        state = CheckpointManager.restore(self.policy, self.latest, self.optimizer)
        if state["step"] < self.plan.steps:
            log.info("resuming align from %s (step %d of %d)", self.latest.id, state["step"], self.plan.steps)
        else:  # killed after its last checkpoint: only the held-out metrics are left
            log.info("%s has taken all %d align steps: writing its held-out metrics", self.latest.id, self.plan.steps)
        return int(state["step"])

    # -- 4. run: fit between checkpoints, in the seeded order
    def run(self, step: int) -> None:
        cfg, bs = self.cfg, self.plan.batch_size
        n = len(self.labels)
        order = np.random.default_rng(cfg.seed).permutation(np.resize(np.arange(n), self.plan.steps * bs))
        for lo, hi in self.plan.segments(step):
            rows = order[lo * bs:hi * bs]
            # in a log (2), kgpt2's progress lines only, as train: Keras' line would count this segment's steps
            progress = ([ProgressLines("align", lo, self.plan.steps, metrics=("loss",), at_end=True)]
                        if self.verbose == 2 else [])
            self.model.fit(take(self.train_x, rows), self.train_y[rows], batch_size=bs, epochs=1,
                           shuffle=False, verbose=0 if self.verbose == 2 else self.verbose, callbacks=progress)
            self._save(hi)

    def _save(self, step: int) -> None:
        done = step >= self.plan.steps
        state = {"stage": int(done), "epoch": 0, "batch": step, "step": step, "stage_end": done, "kind": KIND,
                 "signature": self.cfg.model_signature(), "config_hash": self.cfg.hash(),
                 "align_plan": self._plan_record(), "start": self.started_from, "tokenizer": self.tokenizer_hash}
        self.store.save(self.policy, self.optimizer, state)

    # -- 5. finish: held-out metrics before and after
    def finish(self) -> dict:
        a, cfg, s = self.cfg.align, self.cfg, self.stats
        options = {"label_smoothing": a.label_smoothing, "simpo_gamma": a.simpo_gamma}
        before = score_heldout(self.held_y, self.held_y[:, :2], a.loss, a.beta, **options)
        after = score_heldout(self.held_y, predict_logprobs(self.model, self.held_x, cfg.train.batch_size),
                              a.loss, a.beta, **options)
        result = {"pairs": {"read": s.read, "ties_skipped": s.ties, "identical_dropped": s.identical,
                            "too_long_dropped": s.too_long, "unpaired": s.unpaired, "unpaired_skipped": s.skipped,
                            "train": len(self.labels),
                            "heldout": len(self.held_y), "files": s.files},
                  "loss": a.loss, "beta": a.beta, "steps": a.steps, "batch_size": cfg.train.batch_size,
                  "backend": keras.backend.backend(), "heldout_before": before, "heldout_after": after,
                  "checkpoint": self.store.latest().id, "start": self.started_from}
        atomic_write_text(self.run_.align_result, json.dumps(result, indent=2))
        return result


def _has_checkpoints(cfg: Config) -> bool:
    return bool(Run.of(cfg).checkpoints().list())


def _model_of_own_run(cfg: Config) -> Config:
    """A resume whose `align.init_run` is no run from here (deleted, or a recipe's relative path seen from another
    folder) got none of its [model], [lora] and data.sequence_length: they come from the align run's own config.json,
    which recorded them. Before, the defaults stood in (GPT-2 base, to download) and the resume failed on them."""
    if not cfg.align.init_run or Run(cfg.align.init_run).exists() or not _has_checkpoints(cfg):
        return cfg
    typed = cfg.typed_keys or frozenset()
    if any(k.startswith(("model.", "lora.")) or k == "data.sequence_length" for k in typed):
        return cfg  # set by the user: _check_resumable judges them
    own = Run.of(cfg).config()
    data = replace(cfg.data, sequence_length=own.data.sequence_length)
    return replace(cfg, model=own.model, lora=own.lora, data=data)


def _same_run_name(old, new: str) -> bool:
    """align.init_run as the run recorded it and as given now name one run: the path may be the one typed then
    (relative to where align ran), the one a config.json resolves, or where the two runs were moved since."""
    return isinstance(old, str) and bool(old) == bool(new) and Path(old).name == Path(new).name


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _start_checkpoint(cfg: Config, run_dir, checkpoint: str) -> Checkpoint | None:
    """The checkpoint of another run (e.g. Alpaca SFT, same model signature) that align starts from; None for `base`.

    Only its weights are read, so only they must verify (as generate's): a damaged optimizer state in the run's
    newest checkpoint does not send align to an older one.
    """
    run = Run(run_dir)
    other = run.config()
    theirs, ours = other.model_signature(), cfg.model_signature()
    presets = other.model.preset, cfg.model.preset
    if all(Path(p).is_dir() for p in presets) and same_files(*presets):
        theirs["preset"] = ours["preset"]  # the run holds its own copy of this preset (kgpt2.run.Run.adopt)
    if theirs != ours:  # each differing field named, the run's value -> this config's
        raise UserError(f"align.init_run '{run_dir}' was trained with another model, LoRA or sequence "
                        f"setting than this config ({differences(theirs, ours)}); leave [model], [lora] and "
                        "data.sequence_length unset to take the run's")
    if checkpoint == BASE:
        return None
    return run.start_checkpoint(checkpoint, "align.init_checkpoint")
