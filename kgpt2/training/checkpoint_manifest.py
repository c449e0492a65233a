"""What a checkpoint folder holds, and how a reader knows it is intact.

    weights.npz     the trainable variables (only the LoRA adapter and the
                    attention biases when LoRA is on: a few MB for GPT-2 base)
                    and the dropout RNG states, each under its variable's path
    optimizer.npz   every optimizer variable (moments, step counter, the fp16
                    loss scale), under its path without the optimizer's name
    <stage>.weights.h5  at a stage end: the stage's merged export, written with
                    the checkpoint and linked (or copied) into the run folder
    state.json      stage, epoch, next batch, global step, metrics, config
                    hash and signature, library versions; `stage_end`, or
                    `stopped` ("max_steps": train.max_steps stopped the stage
                    before its end, the cursor in it)
    manifest.json   size and SHA-256 of each file above but state.json;
                    written last

`damage(folder)` says why a checkpoint cannot be trusted (a file missing, cut
short or changed) or None. Checksums are remembered in this process per file
(`file_sha256`): restoring one checkpoint twice reads its files once, and a
file changed on disk since is read again.

    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from kgpt2.training.checkpoint_manifest import damage, write_manifest
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "weights.npz").write_bytes(b"arrays")
    >>> _ = (folder / "state.json").write_text(json.dumps({"format": 2, "step": 1}))
    >>> write_manifest(folder)
    >>> damage(folder) is None
    True
    >>> _ = (folder / "weights.npz").write_bytes(b"arrayz")
    >>> damage(folder)
    'weights.npz does not match its checksum'
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from kgpt2.io import atomic_write_text

STATE_FILE = "state.json"
WEIGHTS, OPTIMIZER = "weights.npz", "optimizer.npz"
MANIFEST = "manifest.json"
FORMAT = 2  # 1: arrays by position, no manifest (read, unchecked); 2: by name, with manifest


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


def write_manifest(folder: Path) -> None:
    """Write the manifest of the files in `folder` (all but state.json): the checkpoint's last file."""
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name not in (STATE_FILE, MANIFEST)}
    atomic_write_text(folder / MANIFEST, json.dumps({"format": FORMAT, "files": files}, indent=2))


def damage(folder: Path, checksums: bool = True, only: tuple[str, ...] | None = None) -> str | None:
    """Why the checkpoint in `folder` cannot be trusted, or None if it is intact; `only` (file names, e.g.
    `(WEIGHTS,)`): check just these files of its manifest, all that a reader loading only them needs."""
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
    if only is not None:
        unlisted = [name for name in only if name not in files]
        if unlisted:
            return f"{unlisted[0]} is not in its {MANIFEST}"
        files = {name: files[name] for name in only}
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
