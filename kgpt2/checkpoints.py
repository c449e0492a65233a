"""Checkpoint directories that a crash can never corrupt.

A run keeps `ckpt-<global_step>/` directories, each with

    weights.npz     the trainable variables (only the LoRA adapter and the
                    attention biases when LoRA is on: a few MB for GPT-2 base)
                    and the dropout RNG states
    optimizer.npz   every optimizer variable (moments, step counter,
                    gradient accumulators, loss scale)
    state.json      stage, epoch, next batch, global step, metrics, config
                    hash and signature, library versions; written last

A checkpoint is written into a temporary directory, fsynced, then renamed:
a directory named `ckpt-N` is always complete, and listing ignores anything
else. Saving fails with a `UserError` that names the problem (disk full,
read-only directory) and leaves the previous checkpoints as they were.
The store knows nothing else of the run: which checkpoint retention must
spare besides stage ends (the best one) is the caller's `protected()`, and
ids such as `best` are resolved by `kgpt2.run.Run`. `export_weights` writes
a stage's merged `.weights.h5` beside them.

    >>> import tempfile
    >>> from kgpt2.checkpoints import CheckpointManager
    >>> mgr = CheckpointManager(tempfile.mkdtemp())
    >>> mgr.list(), mgr.latest()
    ([], None)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kgpt2.distribution import host_array, is_writer
from kgpt2.errors import UserError
from kgpt2.io import atomic_write_text, publish_folder
from kgpt2.models import save_unpadded_weights

STATE_FILE = "state.json"


def checkpoint_variables(model) -> list:
    """What a checkpoint holds of the model: trainable variables and RNG states."""
    trainable = list(model.trainable_variables)
    seeds = [v for v in model.non_trainable_variables if "seed_generator" in v.path]
    return trainable + seeds


def _save_arrays(path: Path, variables) -> None:
    arrays = {f"v{i:05d}": v for i, v in enumerate(variables)}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


def _load_arrays(path: Path, variables, what: str) -> None:
    with np.load(path) as data:
        keys = sorted(data.files)
        if len(keys) != len(variables):
            raise UserError(
                f"checkpoint {path.parent.name} holds {len(keys)} {what} variables but the model has "
                f"{len(variables)}: it was written by a different model or LoRA setting"
            )
        for key, var in zip(keys, variables):
            value = data[key]
            if tuple(value.shape) != tuple(var.shape):
                raise UserError(
                    f"checkpoint {path.parent.name}: {what} variable {var.path} has shape "
                    f"{tuple(value.shape)} there but {tuple(var.shape)} in the model"
                )
            var.assign(value)


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    state: dict

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def stage_number(self) -> int | None:
        """The stage it belongs to, from 1: a stage end's state counts the stages
        finished, a mid-stage one's the stage running (from 0)."""
        if "stage" not in self.state:
            return None
        return self.state["stage"] + (0 if self.state.get("stage_end") else 1)


class CheckpointManager:
    """The `ckpt-<step>/` folders of one run: list, save, retain, restore.

    `protected() -> ids` names checkpoints retention must keep besides stage
    ends (the run's best one: `kgpt2.run.Run.checkpoints` passes it).
    """

    def __init__(self, run_dir, keep_last: int = 3, protected=lambda: ()):
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.protected = protected

    def path_for(self, step: int) -> Path:
        return self.run_dir / f"ckpt-{step}"

    def list(self) -> list[Checkpoint]:
        """Complete checkpoints, oldest first."""
        found = []
        if not self.run_dir.is_dir():
            return found
        for d in self.run_dir.glob("ckpt-*"):
            state_path = d / STATE_FILE
            if not (d.is_dir() and d.name[5:].isdigit() and state_path.is_file()):
                continue
            try:
                state = json.loads(state_path.read_text())
            except (json.JSONDecodeError, OSError):
                continue
            found.append(Checkpoint(d, int(d.name[5:]), state))
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> Checkpoint | None:
        ckpts = self.list()
        return ckpts[-1] if ckpts else None

    def get(self, checkpoint_id: str) -> Checkpoint:
        """A checkpoint by id (`ckpt-120`, `120`, `stage-2`, `latest`)."""
        ckpts = self.list()
        if not ckpts:
            raise UserError(f"run '{self.run_dir}' has no checkpoints yet")
        if checkpoint_id in ("latest", "", None):
            return ckpts[-1]
        for c in ckpts:
            if checkpoint_id in (c.id, str(c.step)):
                return c
        stage_ends = [c for c in ckpts if c.state.get("stage_end")]
        for c in stage_ends:
            # a stage-end state counts the stages finished, so stage N's end has stage == N
            if checkpoint_id == f"stage-{c.state['stage']}":
                return c
        known = ", ".join(c.id for c in ckpts)
        raise UserError(f"run '{self.run_dir}' has no checkpoint '{checkpoint_id}' (it has: {known})")

    def save(self, model, optimizer, state: dict) -> Checkpoint:
        step = int(state["step"])
        final = self.path_for(step)
        # Every process of a multi-host run gathers sharded variables; process 0 alone writes them.
        weights = [host_array(v) for v in checkpoint_variables(model)]
        moments = [host_array(v) for v in optimizer.variables] if optimizer is not None else None
        if not is_writer():
            return Checkpoint(final, step, state)
        tmp = None
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".ckpt-{step}.tmp-", dir=self.run_dir))
            _save_arrays(tmp / "weights.npz", weights)
            if moments is not None:
                _save_arrays(tmp / "optimizer.npz", moments)
            state = dict(state, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2))  # fsynced, like the arrays
            publish_folder(tmp, final)  # the same step saved again (a stage end) replaces it whole
        except OSError as e:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            last = self.latest()
            kept = f"; the last good checkpoint {last.id} is intact" if last else ""
            raise UserError(f"could not write checkpoint to '{self.run_dir}': {e.strerror or e}{kept}") from None
        self._retain()
        return Checkpoint(final, step, state)

    def _retain(self) -> None:
        """Keep the last `keep_last` checkpoints and every stage end."""
        ckpts = self.list()
        keep = set(self.protected())
        for c in ckpts[:-self.keep_last] if self.keep_last > 0 else []:
            if not c.state.get("stage_end") and c.id not in keep:
                shutil.rmtree(c.path, ignore_errors=True)
        for stale in self.run_dir.glob(".ckpt-*.tmp-*"):  # left by a crash mid-save
            shutil.rmtree(stale, ignore_errors=True)

    @staticmethod
    def restore(model, checkpoint: Checkpoint, optimizer=None) -> dict:
        """Load a checkpoint's weights (and optimizer state) into a built model."""
        _load_arrays(checkpoint.path / "weights.npz", checkpoint_variables(model), "model")
        if optimizer is not None:
            if not optimizer.built:
                optimizer.build(model.trainable_variables)
            _load_arrays(checkpoint.path / "optimizer.npz", optimizer.variables, "optimizer")
        return checkpoint.state


def export_weights(model, path) -> Path:
    """The full model as a plain `.weights.h5` (LoRA merged by Keras on save), written atomically."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        save_unpadded_weights(model.backbone, tmp)  # original vocabulary size
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
