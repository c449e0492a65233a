"""Checkpoint directories that a crash can never corrupt, and that check themselves.

A run keeps `ckpt-<global_step>/` directories, each with

    weights.npz     the trainable variables (only the LoRA adapter and the
                    attention biases when LoRA is on: a few MB for GPT-2 base)
                    and the dropout RNG states, each under its variable's path
    optimizer.npz   every optimizer variable (moments, step counter, the fp16
                    loss scale), under its path without the optimizer's name
    <stage>.weights.h5  at a stage end: the stage's merged export, written with
                    the checkpoint and linked (or copied) into the run folder
    state.json      stage, epoch, next batch, global step, metrics, config
                    hash and signature, library versions
    manifest.json   size and SHA-256 of each file above but state.json;
                    written last

A checkpoint is written into a temporary directory `.ckpt-N.tmp-<pid>-*`,
fsynced, then renamed: a directory named `ckpt-N` was complete when
published. Restoring checks the manifest (sizes, checksums) and every array
name (a file's checksum is read once per process while its size, mtime and
ctime stay the same: `file_sha256`); a checkpoint damaged later (truncated, a
file deleted, bytes changed) is refused in one sentence, and `newest_intact()` (what `latest` means to
train, evaluate, generate, export and the demo) skips it with one warning
line, never deleting it. Saving fails with a `UserError` that names the
problem (disk full, read-only directory) and leaves the previous checkpoints
as they were. Cleanup removes only temporary folders whose owner (the pid in
the name) is this process or dead, so it never pulls a folder from under
another live writer. `KGPT2_FAULT_POINT=<name>` makes the process SIGKILL
itself at that point (`fault_point`), for the fault-injection tests.

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
    >>> from kgpt2.checkpoints import CheckpointManager
    >>> mgr = CheckpointManager(tempfile.mkdtemp())
    >>> mgr.list(), mgr.newest_intact()
    ([], None)
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import keras_hub
import numpy as np

from kgpt2.adapters import merged_backbone
from kgpt2.distribution import host_array, is_writer, process_count
from kgpt2.errors import UserError
from kgpt2.io import atomic_write_text, link_or_copy, publish_folder
from kgpt2.lock import owner_gone

log = logging.getLogger("kgpt2")

STATE_FILE = "state.json"
WEIGHTS, OPTIMIZER = "weights.npz", "optimizer.npz"
MANIFEST = "manifest.json"
FORMAT = 2  # 1: arrays by position, no manifest (read, unchecked); 2: by name, with manifest


def fault_point(name: str) -> None:
    """Test hook: SIGKILL this process here when KGPT2_FAULT_POINT names this point
    (`mid-checkpoint`, `after-checkpoint`, `mid-cleanup`); pause here for ever
    when KGPT2_FAULT_PAUSE does (a test then acts while the process holds its lock)."""
    if os.environ.get("KGPT2_FAULT_POINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    while os.environ.get("KGPT2_FAULT_PAUSE") == name:
        time.sleep(1)


def checkpoint_variables(model) -> list:
    """What a checkpoint holds of the model: trainable variables and RNG states."""
    trainable = list(model.trainable_variables)
    seeds = [v for v in model.non_trainable_variables if "seed_generator" in v.path]
    return trainable + seeds


def array_names(variables, optimizer: bool = False) -> list[str]:
    """Stable names for `variables`: their paths.

    Optimizer variables keep only their last part: the parts before are the
    optimizers' own names (`adam_w_1` in a second build; TensorFlow nests a
    wrapped optimizer's as `loss_scale_optimizer/adam_w_3/`); RNG states are numbered in order (their generators'
    names carry a per-process counter). A repeated name gets `#n`.
    """
    names, seen, seeds = [], {}, 0
    for v in variables:
        path = getattr(v, "path", "") or ""
        if "seed_generator" in path:
            name, seeds = f"seed_generator/{seeds}", seeds + 1
        elif optimizer:
            name = path.rsplit("/", 1)[-1]
        else:
            name = path
        count = seen.get(name, 0)
        seen[name] = count + 1
        names.append(name if count == 0 else f"{name}#{count}")
    return names


def _save_arrays(path: Path, variables) -> None:
    names = array_names(variables, optimizer=path.name == OPTIMIZER)
    values = [host_array(v) for v in variables]  # a multi-host run gathers sharded variables
    arrays = {n: np.asarray(v) for n, v in zip(names, values)}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


def _load_arrays(path: Path, variables, what: str) -> None:
    where = path.parent.name
    with np.load(path) as data:
        keys = list(data.files)
        if keys and all(k.startswith("v") and k[1:].isdigit() for k in keys):  # format 1: by position
            names, keys = array_names(variables, optimizer=path.name == OPTIMIZER), sorted(keys)
            if len(keys) != len(variables):
                raise UserError(f"checkpoint {where} holds {len(keys)} {what} variables but the model has "
                                f"{len(variables)}: it was written by a different model or LoRA setting")
            by_name = dict(zip(names, keys))
        else:
            names = array_names(variables, optimizer=path.name == OPTIMIZER)
            missing, unexpected = [n for n in names if n not in keys], [k for k in keys if k not in set(names)]
            if missing or unexpected:
                raise UserError(f"checkpoint {where} does not match the model's {what} variables "
                                f"(missing: {_few(missing)}; unexpected: {_few(unexpected)}): it was written by "
                                "a different model or LoRA setting")
            by_name = {n: n for n in names}
        values = {}
        for name, var in zip(names, variables):
            value = data[by_name[name]]
            if tuple(value.shape) != tuple(var.shape):
                raise UserError(f"checkpoint {where}: {what} variable {name} has shape "
                                f"{tuple(value.shape)} there but {tuple(var.shape)} in the model")
            values[name] = value
    for name, var in zip(names, variables):  # all checked first: never a half-restored model
        var.assign(values[name])


def _few(names: list[str]) -> str:
    return (", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")) or "none"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# Checksums of files read in this process, by (path, device, inode, size, mtime, ctime): a file changed on
# disk since has another key and is read again. A file changed less than RACY_NS before it was read is not
# remembered (git's "racily clean" rule): a change in the same tick of a coarse file clock (FAT: 2 s) would
# keep its key.
_HASHED: dict = {}
RACY_NS = 2_000_000_000


def file_sha256(path: Path) -> str:
    """The SHA-256 of `path`, read once per process while the file is unchanged."""
    st = os.stat(path)
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _HASHED:
        return _HASHED[key]
    started = time.time_ns()
    digest = _sha256(path)
    if max(st.st_mtime_ns, st.st_ctime_ns) < started - RACY_NS:
        if len(_HASHED) >= 4096:
            _HASHED.clear()
        _HASHED[key] = digest
    return digest


def _write_manifest(folder: Path) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name not in (STATE_FILE, MANIFEST)}
    atomic_write_text(folder / MANIFEST, json.dumps({"format": FORMAT, "files": files}, indent=2))


def damage(folder: Path, checksums: bool = True) -> str | None:
    """Why the checkpoint in `folder` cannot be trusted, or None if it is intact."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return f"{STATE_FILE} is missing or unreadable"
    if state.get("format", 1) < FORMAT:
        return None  # written before manifests: trusted as it is
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is missing or unreadable"
    for name, want in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != want["size"]:
            return f"{name} is {size} bytes, its manifest says {want['size']}"
        if checksums and file_sha256(path) != want["sha256"]:
            return f"{name} does not match its checksum"
    return None


def current_versions() -> dict:
    return {"keras": keras.__version__, "keras_hub": keras_hub.__version__, "backend": keras.backend.backend()}


def restore_checkpoint(model, checkpoint: Checkpoint, optimizer=None) -> dict:
    """Load a checkpoint's weights (and optimizer state) into a built model, every file and name checked."""
    why = damage(checkpoint.path)
    if why is not None:
        raise UserError(f"checkpoint {checkpoint.path} is damaged ({why}); choose another checkpoint")
    _warn_versions(checkpoint)
    _load_arrays(checkpoint.path / WEIGHTS, checkpoint_variables(model), "model")
    if optimizer is not None:
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        _load_arrays(checkpoint.path / OPTIMIZER, optimizer.variables, "optimizer")
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
        self._verdicts: dict = {}  # (path, inode) -> damage(), so each checkpoint is hashed once

    def path_for(self, step: int) -> Path:
        return self.run_dir / f"ckpt-{step}"

    def list(self) -> list[Checkpoint]:
        """Published checkpoints with a readable state, oldest first (intact or not)."""
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

    def damage(self, checkpoint: Checkpoint) -> str | None:
        """Why `checkpoint` cannot be trusted (sizes and checksums checked), or None."""
        try:
            key = (str(checkpoint.path), (checkpoint.path / STATE_FILE).stat().st_ino)
        except OSError:
            return f"{STATE_FILE} is missing"
        if key not in self._verdicts:
            self._verdicts[key] = damage(checkpoint.path)
        return self._verdicts[key]

    def intact(self, warn: bool = True) -> list[Checkpoint]:
        """The checkpoints that pass `damage`, oldest first; one warning line per damaged one."""
        good = []
        for c in self.list():
            why = self.damage(c)
            if why is None:
                good.append(c)
            elif warn:
                log.warning("checkpoint %s is damaged (%s); it is skipped and left as it is", c.path, why)
        return good

    def newest_intact(self) -> Checkpoint | None:
        """The newest checkpoint that is intact, after one line for each newer damaged one."""
        for c in reversed(self.list()):
            why = self.damage(c)
            if why is None:
                return c
            log.warning("checkpoint %s is damaged (%s); using an older one and leaving it as it is", c.path, why)
        return None

    latest = newest_intact

    def get(self, checkpoint_id: str) -> Checkpoint:
        """A checkpoint by id (`ckpt-120`, `120`, `stage-2`, `latest` = the newest intact one)."""
        ckpts = self.list()
        if not ckpts:
            raise UserError(f"run '{self.run_dir}' has no checkpoints yet")
        if checkpoint_id in ("latest", "", None):
            newest = self.newest_intact()
            if newest is None:
                raise UserError(f"every checkpoint of run '{self.run_dir}' is damaged (see the lines above)")
            return newest
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
            tmp = Path(tempfile.mkdtemp(prefix=f".ckpt-{step}.tmp-{os.getpid()}-", dir=self.run_dir))
            _save_arrays(tmp / WEIGHTS, checkpoint_variables(model))
            fault_point("mid-checkpoint")
            if optimizer is not None:
                _save_arrays(tmp / OPTIMIZER, optimizer.variables)
            # Building the merged model of an export is a collective step under several processes
            # (process 1 would not join it): export such a run from its checkpoint on one host.
            if export and process_count() == 1:
                export_weights(model, tmp / export)
            atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2))  # fsynced, like the arrays
            _write_manifest(tmp)  # last: a folder without it was never finished
            self._set_damaged_aside(final)
            publish_folder(tmp, final)  # the same step saved again (a stage end) replaces it whole
        except OSError as e:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            last = self.newest_intact()
            kept = f"; the last good checkpoint {last.id} is intact" if last else ""
            raise UserError(f"could not write checkpoint to '{self.run_dir}': {e.strerror or e}{kept}; "
                            "free space or make it writable, then run the same command to resume") from None
        saved = Checkpoint(final, step, state)
        self._verdicts[(str(final), (final / STATE_FILE).stat().st_ino)] = None  # just written and fsynced
        self._retain()
        return saved

    def _check_room(self, model, optimizer, export) -> None:
        """Refuse before writing when the disk cannot hold the checkpoint (h5py on a full disk may crash)."""
        variables = checkpoint_variables(model) + (list(optimizer.variables) if optimizer is not None else [])
        need = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)
        if export:
            need += sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.backbone.weights)
        free = shutil.disk_usage(self.run_dir).free
        if free < need * 1.05 + (1 << 20):
            raise OSError(errno.ENOSPC, f"No space left on device ({free:,} bytes free, the checkpoint needs "
                          f"about {need:,})", str(self.run_dir))

    def _set_damaged_aside(self, final: Path) -> None:
        """A damaged checkpoint at the step about to be saved again is renamed, not replaced."""
        if final.is_dir() and damage(final) is not None:
            os.rename(final, final.with_name(f"{final.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"))

    def publish_exports(self) -> list[Path]:
        """Put each stage end's export into the run folder where it is missing (after a kill)."""
        published = []
        for c in self.list():
            name = c.state.get("export")
            if not name or (self.run_dir / name).exists() or not (c.path / name).is_file():
                continue
            published.append(link_or_copy(c.path / name, self.run_dir / name))
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
    quantised base dequantised, the original vocabulary size (kgpt2.adapters.merged_backbone)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        merged_backbone(model.backbone).save_weights(str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
