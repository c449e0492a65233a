"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file kgpt2 writes into a run (config, checkpoints' state, logs, tables,
plots) goes through here, so a kill or a full disk mid-write leaves the
previous version in place. Written by hand because the standard library has
no atomic write, and the pattern (temporary file beside the target, fsync,
rename, fsync the folder) is a dozen lines.

    >>> import tempfile, pathlib
    >>> from kgpt2.io import atomic_write_text, publish_folder
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_text(d / "a" / "note.txt", "hello")
    >>> (d / "a" / "note.txt").read_text()
    'hello'
    >>> tmp = d / ".b.tmp"; tmp.mkdir(); _ = (tmp / "x").write_text("1")
    >>> publish_folder(tmp, d / "b").name, (d / "b" / "x").read_text()
    ('b', '1')
    >>> with new_folder(d / "c", "export") as building:
    ...     _ = (building / "y").write_text("2")
    >>> (d / "c" / "y").read_text()
    '2'
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kgpt2.errors import UserError, os_error_reason


def fsync_dir(path) -> None:
    """Make a rename inside `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _umask() -> int:
    """The process's umask, read once: from /proc where Linux shows it; elsewhere reading it means setting it
    (set straight back, though another thread creating a file in between would get 022)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def temp_dir(prefix: str, parent) -> Path:
    """`tempfile.mkdtemp` with the mode `mkdir` would give: mkdtemp's 0700 would stay on the published folder."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _readable_as_umask_allows(folder: Path) -> None:
    """Add the read (and, for folders, search) bits the umask allows to everything in `folder`.

    Libraries writing into a new folder may make files 0600 (safetensors' model.safetensors
    does), which would leave an export unreadable to the people it is for. Bits are only added.
    """
    for path in (folder, *folder.rglob("*")):
        if not path.is_symlink():
            extra = (0o555 if path.is_dir() else 0o444) & ~_umask()
            path.chmod(path.stat().st_mode | extra)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` through a fsynced temporary file and a rename.

    The file gets the mode a plain `open(path, "w")` gives (a replaced file keeps
    its own), not mkstemp's 0600, which would hide it from everyone else.
    """
    atomic_write_files({path: data})


def atomic_write_text(path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_files(contents: dict) -> None:
    """Write several files (path -> bytes or str) so that a full disk leaves all old or all new.

    Every temporary file is written and fsynced before the first rename, so a
    pair like a table's .json and .csv never disagree after a failed write (a
    kill between two renames still can; renames in one folder do not fail for space).
    """
    written = []
    try:
        for path, data in contents.items():
            written.append((_fsynced_temp(Path(path), data.encode("utf-8") if isinstance(data, str) else data), path))
        for tmp, path in written:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in written:
            Path(tmp).unlink(missing_ok=True)
        raise


def _fsynced_temp(path: Path, data: bytes) -> str:
    """A temporary file beside `path` holding `data`, with the mode `path` has or would get."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def publish_folder(tmp, final) -> Path:
    """Rename the finished folder `tmp` to `final`, replacing an older `final` whole.

    The old folder is moved aside first and deleted only once the new one is
    in place, so `final` is at every moment one complete folder or absent.
    """
    tmp, final = Path(tmp), Path(final)
    fsync_dir(tmp)
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{os.getpid()}")
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_dir(final.parent)
    return final


def check_room(folder, nbytes: int, what: str) -> None:
    """Refuse, before writing, `nbytes` into `folder` when its disk cannot hold them with 5% and 1 MiB to spare:
    h5py meeting a full disk may crash the process ("Can't decrement id ref count", then a segfault) instead
    of raising. The OSError says the number checked, margin included, not the bare size.

    >>> try:
    ...     check_room(".", 1 << 70, "the preset")
    ... except OSError as e:
    ...     print(e.errno, e.strerror.endswith("bytes free, the preset needs about 1,239,621,201,753,282,969,600)"))
    28 True
    """
    needed = int(nbytes * 1.05) + (1 << 20)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({free:,} bytes free, {what} needs about "
                      f"{needed:,})", str(folder))


def refuse_used_folder(out, what: str) -> None:
    """A UserError unless `out` is absent or an empty folder: a new folder never replaces a user's files.

    Give `out` as typed: an empty --out is refused as empty, where `Path("")` would be the working folder.
    """
    if not str(out):
        raise UserError(f"--out is empty; name a new folder for the {what}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} target '{out}' is a file; choose a new directory")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{what} target '{out}' already exists and is not empty; choose a new directory")
    if out.is_dir() and not os.access(out, os.W_OK):  # its owner made it read-only: it is not replaced either
        raise UserError(f"{what} target '{out}' is a read-only folder; make it writable for you or choose another")


@contextmanager
def new_folder(out, what: str) -> Iterator[Path]:
    """`with new_folder(out, "export") as tmp:` build the folder in `tmp`; it becomes `out` when the block ends.

    `out` must be absent or empty (checked before and again after the build);
    `tmp` sits beside it (same file system) and is removed whatever happens,
    so a failure mid-build leaves `out` as it was. An OSError becomes a
    UserError naming `out`; `what` names the folder in messages.
    """
    out = Path(out)
    refuse_used_folder(out, what)
    if out.is_symlink():  # a link to an (empty) folder, say on another disk: fill that folder; the link stays
        out = Path(os.path.realpath(out))
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(f".{out.name}.tmp-", out.parent)
        yield tmp
        _readable_as_umask_allows(tmp)
        refuse_used_folder(out, what)  # something may have appeared there during the build
        publish_folder(tmp, out)
    except OSError as e:
        raise UserError(f"could not write the {what} to '{out}': {os_error_reason(e)}") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def link_or_copy(src: Path, dest: Path) -> Path:
    """`dest` as a hard link to `src` (no extra space), or a copy where links are not allowed; atomic."""
    tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # Google Drive and some mounts have no hard links
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def save_figure(fig, path, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically (the format from the name) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or None)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
