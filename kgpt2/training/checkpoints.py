"""Checkpoint directories that a crash can never corrupt, and that check themselves: the store.

A run keeps `ckpt-<global_step>/` directories; what each holds and how it is
verified (manifest, sizes, SHA-256) is `kgpt2.training.checkpoint_manifest`, how the
variables are stored by name is `kgpt2.training.checkpoint_arrays`. This module saves,
lists, retains and restores them.

A checkpoint is written into a temporary directory `.ckpt-N.tmp-<pid>-*`,
fsynced, then renamed: a directory named `ckpt-N` was complete when
published. Restoring checks the manifest and every array name; a checkpoint
damaged later (truncated, a file deleted, bytes changed) is refused in one
sentence, and `newest_intact()` (what `latest` means to train, evaluate,
generate, export and the demo) skips it with one warning line naming the
checkpoint used instead, never deleting it. Readers that load only the weights
pass `only=WEIGHTS_ONLY`: a damaged optimizer state stops only a resume.
Saving fails with a `UserError` that names the problem (disk full, read-only
directory) and leaves the previous checkpoints as they were.
Cleanup removes only temporary folders whose owner (the pid in the name) is
this process or dead, so it never pulls a folder from under another live
writer. `KGPT2_FAULT_POINT=<name>` makes the process SIGKILL itself at that
point (`fault_point`), for the fault-injection tests.

Why not Orbax (orbax-checkpoint): it commits atomically and saves
asynchronously, but it is built on JAX arrays and tensorstore, so the
TensorFlow backend would go through host numpy copies anyway; it records no
checksums, so a checkpoint damaged after its commit is not detected on
restore; and its retention (`max_to_keep`) deletes by step, unaware of stage
ends and the best checkpoint. The store below is small and covers all of it on
every backend; async saves are not needed at GPT-2 sizes (LoRA checkpoints
are a few MB). Not measured here (no GPU in this environment).

The store knows nothing else of the run: which checkpoint retention must
spare besides stage ends (the best one) is the caller's `protected()`, and
ids such as `best` are resolved by `kgpt2.run.Run`.

    >>> import tempfile
    >>> from kgpt2.training.checkpoints import CheckpointManager
    >>> mgr = CheckpointManager(tempfile.mkdtemp())
    >>> mgr.list(), mgr.newest_intact()
    ([], None)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import keras_hub
import numpy as np

from kgpt2.errors import UserError
from kgpt2.io import atomic_write_text, check_room, link_or_copy, publish_folder, temp_dir
from kgpt2.lock import owner_gone
from kgpt2.model.adapters import merged_backbone

# array_names and checkpoint_variables are also imported from here by callers.
from kgpt2.training.checkpoint_arrays import array_names, checkpoint_variables, load_arrays, save_arrays  # noqa: F401
from kgpt2.training.checkpoint_manifest import FORMAT, OPTIMIZER, STATE_FILE, WEIGHTS, damage, write_manifest
from kgpt2.training.distribution import host_array, is_writer, process_count
from kgpt2.training.optimizer import build_optimizer

log = logging.getLogger("kgpt2")
WEIGHTS_ONLY = (WEIGHTS,)  # `only=` for readers that load no optimizer state (generate, serve, export, evaluate)
SKIPPED = "it is skipped and left as it is"


def fault_point(name: str) -> None:
    """Test hook: SIGKILL this process here when KGPT2_FAULT_POINT names this point
    (`mid-checkpoint`, `after-checkpoint`, `mid-cleanup`); pause here for ever
    when KGPT2_FAULT_PAUSE does (a test then acts while the process holds its lock)."""
    if os.environ.get("KGPT2_FAULT_POINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    while os.environ.get("KGPT2_FAULT_PAUSE") == name:
        time.sleep(1)


def current_versions() -> dict:
    return {"keras": keras.__version__, "keras_hub": keras_hub.__version__, "backend": keras.backend.backend()}


def restore_checkpoint(model, checkpoint: Checkpoint, optimizer=None, only: tuple[str, ...] | None = None) -> dict:
    """Load a checkpoint's weights (and optimizer state) into a built model, every file and name checked
    (`only`: just these files, e.g. `(WEIGHTS,)` where a damaged optimizer state does not matter)."""
    why = damage(checkpoint.path, only=only)
    if why is not None:
        raise UserError(f"checkpoint '{checkpoint.path}' is damaged ({why}); choose another checkpoint")
    _warn_versions(checkpoint)
    load_arrays(checkpoint.path / WEIGHTS, checkpoint_variables(model), "model")
    if optimizer is not None:
        build_optimizer(optimizer, model)
        load_arrays(checkpoint.path / OPTIMIZER, optimizer.variables, "optimizer")
    return checkpoint.state


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
    """The `ckpt-<step>/` folders of one run: list, save, retain, verify, restore.

    `protected() -> ids` names checkpoints retention must keep besides stage
    ends (the run's best one: `kgpt2.run.Run.checkpoints` passes it).
    """

    def __init__(self, run_dir, keep_last: int = 3, protected=lambda: ()):
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.protected = protected
        self._verdicts: dict = {}  # (path, inode, files checked) -> damage(), so each is hashed once
        self._unreadable: dict = {}  # checkpoint folder -> step, of the last `list` whose state.json did not read

    def path_for(self, step: int) -> Path:
        return self.run_dir / f"ckpt-{step}"

    def list(self) -> list[Checkpoint]:
        """Published checkpoints with a readable state, oldest first (intact or not)."""
        found, self._unreadable = [], {}
        if not self.run_dir.is_dir():
            return found
        for d in self.run_dir.glob("ckpt-*"):
            state_path = d / STATE_FILE
            if not (d.is_dir() and d.name[5:].isdigit() and state_path.is_file()):
                continue
            try:
                state = json.loads(state_path.read_text(encoding="utf-8"))
            except (ValueError, OSError):  # ValueError: not JSON, or not text at all (UnicodeDecodeError)
                self._unreadable[d] = int(d.name[5:])  # no step or cursor to list it by (`_unreadable_states`)
                continue
            found.append(Checkpoint(d, int(d.name[5:]), state))
        return sorted(found, key=lambda c: c.step)

    def _unreadable_states(self, after_step: int) -> list[tuple[int, Path, str]]:
        """(step, folder, why) of each checkpoint newer than `after_step` whose state.json the last `list` could not
        read (cut short, emptied): it gets one line, as any other damage does, instead of silence."""
        return [(step, d, f"{STATE_FILE} is missing or unreadable") for d, step in self._unreadable.items()
                if step > after_step]

    def damage(self, checkpoint: Checkpoint, only: tuple[str, ...] | None = None) -> str | None:
        """Why `checkpoint` cannot be trusted (sizes and checksums checked; `only`: of these files), or None."""
        try:
            key = (str(checkpoint.path), (checkpoint.path / STATE_FILE).stat().st_ino, only)
        except OSError:
            return f"{STATE_FILE} is missing"
        if key not in self._verdicts:
            self._verdicts[key] = damage(checkpoint.path, only=only)
        return self._verdicts[key]

    def sorted_out(self, only: tuple[str, ...] | None = None) -> tuple[list[Checkpoint], list[tuple[int, Path, str]]]:
        """(the checkpoints that pass `damage` (`only`: in these files), oldest first; (step, folder, why) of each
        that does not, those whose state.json does not read included)."""
        good, damaged = [], []
        for c in self.list():
            why = self.damage(c, only)
            if why is None:
                good.append(c)
            else:
                damaged.append((c.step, c.path, why))
        return good, damaged + self._unreadable_states(-1)

    def intact(self, warn: bool = True, only: tuple[str, ...] | None = None) -> list[Checkpoint]:
        """The checkpoints that pass `damage` (`only`: in these files), oldest first; one warning line per
        damaged one."""
        good, damaged = self.sorted_out(only)
        if warn:
            warn_damaged(damaged, SKIPPED)
        return good

    def newest_intact(self, only: tuple[str, ...] | None = None) -> Checkpoint | None:
        """The newest checkpoint that is intact (`only`: in these files), after one line for each newer damaged
        one that names the checkpoint used instead."""
        listed = self.list()
        found = next((c for c in reversed(listed) if self.damage(c, only) is None), None)
        after = found.step if found is not None else -1
        newer = [(c.step, c.path, self.damage(c, only)) for c in listed if c.step > after]
        warn_damaged(newer + self._unreadable_states(after),
                      f"using {found.id} instead and leaving it as it is" if found is not None else SKIPPED)
        return found

    latest = newest_intact

    def get(self, checkpoint_id: str, only: tuple[str, ...] | None = None) -> Checkpoint:
        """A checkpoint by id (`ckpt-120`, `120`, `stage-2`, `latest` = the newest intact one; `only`: intact
        in these files)."""
        ckpts = self.list()
        if not ckpts:
            raise UserError(f"run '{self.run_dir}' has no checkpoints yet")
        if checkpoint_id in ("latest", "", None):
            newest = self.newest_intact(only)
            if newest is None:
                raise UserError(f"every checkpoint of run '{self.run_dir}' is damaged (see the lines above)")
            return newest
        for c in ckpts:
            if checkpoint_id in (c.id, str(c.step)):
                return c
        stage_ends = [c for c in ckpts if c.state.get("stage_end")]
        for c in reversed(stage_ends):
            # a stage-end state counts the stages finished, so stage N's end has stage == N; the newest: a
            # one-stage run trained on with more epochs ended its stage again
            if checkpoint_id == f"stage-{c.state['stage']}":
                return c
        _refuse_a_stopped_stage(checkpoint_id, ckpts, self.run_dir)
        named = self.run_dir / (checkpoint_id if checkpoint_id.startswith("ckpt-") else f"ckpt-{checkpoint_id}")
        if (named / STATE_FILE).exists() or named.is_dir():  # there, but its state.json unreadable: not listed
            raise UserError(f"checkpoint '{named}' is damaged ({STATE_FILE} is missing or unreadable); choose another "
                            "checkpoint")
        known = ", ".join([c.id for c in ckpts] + list(dict.fromkeys(f"stage-{c.state['stage']}" for c in stage_ends)))
        raise UserError(f"run '{self.run_dir}' has no checkpoint '{checkpoint_id}' (it has: {known}; and latest, base)")

    def save(self, model, optimizer, state: dict, export: str | None = None) -> Checkpoint:
        """Write a checkpoint; `export` names a merged `.weights.h5` written inside it too."""
        step = int(state["step"])
        final = self.path_for(step)
        state = dict(state, format=FORMAT, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     versions=state.get("versions") or current_versions(), export=export)
        if not is_writer():  # every process gathers its shards above; process 0 alone writes
            for v in checkpoint_variables(model) + (list(optimizer.variables) if optimizer is not None else []):
                host_array(v)
            return Checkpoint(final, step, state)
        tmp = None
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._check_room(model, optimizer, export)
            tmp = temp_dir(f".ckpt-{step}.tmp-{os.getpid()}-", self.run_dir)
            save_arrays(tmp / WEIGHTS, checkpoint_variables(model))
            fault_point("mid-checkpoint")
            if optimizer is not None:
                save_arrays(tmp / OPTIMIZER, optimizer.variables)
            # Building the merged model of an export is a collective step under several processes
            # (process 1 would not join it): export such a run from its checkpoint on one host.
            if export and process_count() == 1:
                export_weights(model, tmp / export)
            atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2))  # fsynced, like the arrays
            write_manifest(tmp)  # last: a folder without it was never finished
            self._set_damaged_aside(final)
            publish_folder(tmp, final)  # the same step saved again (a stage end) replaces it whole
        except BaseException as e:  # Ctrl-C or SIGTERM too: its half-written folder goes, not left for a next run
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if not isinstance(e, OSError):
                raise
            last = self.newest_intact()
            kept = f"; the last good checkpoint {last.id} is intact" if last else ""
            raise UserError(f"could not write checkpoint to '{self.run_dir}': {e.strerror or e}{kept}; "
                            "free space or make it writable, then run the same command to resume") from None
        saved = Checkpoint(final, step, state)
        self._verdicts[(str(final), (final / STATE_FILE).stat().st_ino, None)] = None  # just written and fsynced
        self._retain()
        return saved

    def _check_room(self, model, optimizer, export) -> None:
        """Refuse before writing when the disk cannot hold the checkpoint (h5py on a full disk may crash)."""
        variables = checkpoint_variables(model) + (list(optimizer.variables) if optimizer is not None else [])
        need = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)
        if export:
            need += sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.backbone.weights)
        check_room(self.run_dir, need, "the checkpoint")  # the number said is the one checked (5% + 1 MiB more)

    def _set_damaged_aside(self, final: Path) -> None:
        """A damaged checkpoint at the step about to be saved again is renamed, not replaced."""
        if final.is_dir() and damage(final) is not None:
            os.rename(final, final.with_name(f"{final.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"))

    def publish_exports(self) -> list[Path]:
        """Put each stage end's export into the run folder where it is missing (after a kill) or is an earlier end's
        of the same stage (a stage trained on: more epochs, a higher train.max_steps): the newest end's file wins."""
        newest = {c.state["export"]: c.path / c.state["export"] for c in self.list()
                  if c.state.get("export") and (c.path / c.state["export"]).is_file()}
        published = []
        for name, src in newest.items():
            dest = self.run_dir / name
            if dest.exists() and (os.path.samefile(src, dest) or dest.stat().st_mtime >= src.stat().st_mtime):
                continue  # its link, or a copy made after it was written (a folder without hard links)
            published.append(link_or_copy(src, dest))
        return published

    def _retain(self) -> None:
        """Keep the last `keep_last` intact checkpoints, every stage end and every damaged one."""
        ckpts = [c for c in self.list() if damage(c.path, checksums=False) is None]
        keep = set(self.protected())
        for c in ckpts[:-self.keep_last] if self.keep_last > 0 else []:
            if not c.state.get("stage_end") and c.id not in keep:
                _remove_folder(c.path)
        self.remove_leftovers()

    def remove_leftovers(self) -> None:
        """Remove temporary folders a dead process (or this one) left; never a live one's."""
        for stale in [*self.run_dir.glob(".ckpt-*.tmp-*"), *self.run_dir.glob(".trash-*")]:
            if owner_gone(stale.name):
                shutil.rmtree(stale, ignore_errors=True)

    restore = staticmethod(restore_checkpoint)


def _refuse_a_stopped_stage(checkpoint_id: str, ckpts: list[Checkpoint], run_dir: Path) -> None:
    """`stage-N` of a stage that train.max_steps stopped before its end names no checkpoint: say where it stopped."""
    stopped = [c for c in ckpts if c.state.get("stopped") == "max_steps" and checkpoint_id == f"stage-{c.stage_number}"]
    if stopped:
        raise UserError(f"run '{run_dir}' has not finished stage {stopped[-1].stage_number}: train.max_steps stopped "
                        f"it at {stopped[-1].id} (step {stopped[-1].step}); ask for {stopped[-1].id}, or train the "
                        "stage on with a higher train.max_steps")


def max_steps_stop(state: dict) -> tuple[int, str] | None:
    """(stage number, "after 2 of 12 batches") where train.max_steps stopped that stage before its end at the
    checkpoint of `state` (its stage_metrics' last row is the stage's part); None for any other checkpoint."""
    row = (state.get("stage_metrics") or [{}])[-1]
    if state.get("stopped") != "max_steps" or "of_batches" not in row:
        return None
    return row["stage"], f"after {row['batches']:,} of {row['of_batches']:,} batches"


def warn_damaged(damaged: list[tuple[int, Path, str]], done: str) -> None:
    """One line for each (step, folder, why), oldest first, saying what was `done` instead."""
    for _, path, why in sorted(damaged, key=lambda item: item[0]):
        log.warning("checkpoint '%s' is damaged (%s); %s", path, why, done)


def _warn_versions(checkpoint: Checkpoint) -> None:
    saved, now = checkpoint.state.get("versions") or {}, current_versions()
    changed = [f"{k} {saved[k]} (now {now[k]})" for k in ("keras", "keras_hub") if k in saved and saved[k] != now[k]]
    if changed:
        log.warning("checkpoint %s was written with %s; it loads by name, but check its results",
                    checkpoint.id, ", ".join(changed))


def _remove_folder(path: Path) -> None:
    """Remove a checkpoint: renamed aside first, so a kill mid-removal leaves no half checkpoint."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.rename(path, trash)
    fault_point("mid-cleanup")
    shutil.rmtree(trash, ignore_errors=True)


def export_weights(model, path) -> Path:
    """The full model as a plain `.weights.h5`, written atomically: adapters merged, a
    quantised base dequantised, the original vocabulary size (kgpt2.model.adapters.merged_backbone)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        merged_backbone(model.backbone).save_weights(str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
