"""Where `prepare` may write a shard set, and how it publishes one without losing anything.

`prepare` writes into a temporary folder beside `--out` (same file system)
named `.<out>.kgpt2-tmp-<pid>` and renames it into place at the end. An existing
`--out` is replaced only when it is empty or a kgpt2 shard set (a kgpt2
manifest and only the files it names); a folder of anything else, the
source itself or a folder holding it is refused in one sentence, so nothing
the user had is ever deleted. A prepare killed mid-way leaves only its
`.kgpt2-tmp-<pid>` (or, between the two renames of a replacement,
`.kgpt2-old-<pid>`, the previous set); the next prepare removes the first and
puts the second back, and only those whose process is gone.

    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "corpus.txt").write_text("Hello world.")
    12
    >>> check_out_folder(root / "shards", root / "corpus.txt")  # a new folder: fine
    >>> try:
    ...     check_out_folder(root, root / "corpus.txt")
    ... except UserError as e:
    ...     print(str(e).split(";")[0].endswith("holds the source '" + str(root / "corpus.txt") + "'"))
    True
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import shutil
from pathlib import Path

from kgpt2.errors import UserError
from kgpt2.lock import RunLock, fcntl

MANIFEST = "manifest.json"
FORMAT = "kgpt2-shards/1"
_OWN_FOLDER = re.compile(r"\.(?P<name>.+)\.kgpt2-(?P<kind>tmp|old)-(?P<pid>\d+)")


def temp_folder(out: Path, kind: str = "tmp") -> Path:
    """This process's temporary folder beside `out`: `.<name>.kgpt2-<kind>-<pid>`."""
    return out.with_name(f".{out.name}.kgpt2-{kind}-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():  # ours cannot exist yet: a leftover of an earlier process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_leftovers(out: Path) -> None:
    """Remove this out folder's temp folders and lock file left by dead prepares; put back an
    old shard set a kill left aside between the two renames of a replacement."""
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return  # nothing to clean where nothing can be listed
    if fcntl is not None:
        PrepareLock(out).remove_if_free()
    for entry in entries:
        m = _OWN_FOLDER.fullmatch(entry.name)
        if not m or m["name"] != out.name or _pid_alive(int(m["pid"])) or not entry.is_dir():
            continue
        if m["kind"] == "old" and not out.exists():
            os.rename(entry, out)  # the previous shard set, back where it was
        else:
            shutil.rmtree(entry, ignore_errors=True)


def local_source(source) -> Path | None:
    """The file or folder a source reads, or None (`pydoc`, `hf:` ids)."""
    text = str(getattr(source, "path", source))
    return None if text == "pydoc" or text.startswith("hf:") else Path(text)


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


class PrepareLock(RunLock):
    """`prepare`'s hold on its `--out` for the whole prepare, so a second prepare into the same folder is refused
    instead of both reporting success and one set silently replacing the other.

    The lock file is `.<out>.kgpt2-lock` beside the folder (not inside: the folder is replaced by a rename) and
    is removed on release. It is `RunLock`'s flock, which the OS frees when a prepare dies in any way (SIGKILL),
    so a file left by a killed prepare blocks nobody.
    """

    def __init__(self, out: Path):
        super().__init__(out.parent, f".{out.name}.kgpt2-lock")
        self.out = out

    def busy_sentence(self, who: str) -> str:
        return (f"another kgpt2 prepare is writing into '{self.out}' ({who}); wait for it to finish, "
                "or choose another --out")

    def _remove_if_unused(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()  # still locked: a prepare that opened it meanwhile retries on the new file
            for folder in self._made:
                folder.rmdir()  # a failed prepare leaves no folder it made; stops at one holding something

    def remove_if_free(self) -> None:
        """Remove the lock file a killed prepare left, unless a live one holds it (quietly: a read-only disk)."""
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError (an OSError) when it is held
                self.path.unlink()
            finally:
                os.close(fd)


def resolved_out(out) -> Path:
    """`out` with links and `..` resolved (`--out .` gets a real name, a symlinked --out is replaced where it
    points); a link loop is one sentence, in the CLI and in the library alike."""
    try:
        return Path(out).resolve()
    except (RuntimeError, OSError) as e:  # a link loop: RuntimeError up to Python 3.12, ELOOP after
        if isinstance(e, OSError) and e.errno != errno.ELOOP:
            raise
        raise UserError(f"--out '{out}' is a symbolic link loop; name a new folder for the shards") from None


def check_out_folder(out: Path, source: Path | None) -> None:
    """Refuse an `--out` whose replacement could lose a file kgpt2 did not write, or that another prepare is
    writing into now (said before the tokenizer loads; `prepare` then holds `PrepareLock` throughout).

    `source`: the local file or folder read (None for `pydoc` and `hf:`).
    """
    out = resolved_out(out)
    PrepareLock(out).check_free()
    if source is not None:
        source = source.resolve()
        if _is_within(source, out):
            raise UserError(f"--out '{out}' holds the source '{source}'; write the shards to a new folder, "
                            f"e.g. --out {shlex.quote(str(out / 'shards'))}")
        if source.is_dir() and _is_within(out, source):
            # the shard set's own files (article ids are .txt) would become input on the next run
            raise UserError(f"--out '{out}' is inside the source folder '{source}'; write the shards elsewhere")
    if _is_within(Path.cwd().resolve(), out):
        raise UserError(f"--out '{out}' is the folder you are working in; name a new folder for the shards, "
                        "e.g. --out shards")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise UserError(f"--out '{out}' is a file, not a folder; name a new folder for the shards")
    try:
        unknown = unknown_files(out)
    except OSError as e:  # e.g. a folder this user may not list
        raise UserError(os_error_sentence(e, out)) from None
    if unknown:
        raise UserError(f"--out '{out}' holds files that are not a kgpt2 shard set (e.g. {unknown[0]}); "
                        "kgpt2 replaces only its own shard sets, so name a new or empty folder")


def unknown_files(folder: Path) -> list[str]:
    """Names in `folder` that a kgpt2 shard set there would not have written (sorted)."""
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return []
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        known = {MANIFEST} | {f for s in manifest["splits"].values()
                              for f in (s["tokens"], s["offsets"], s["ids"], s.get("mask")) if f}
        if manifest.get("format") != FORMAT:
            raise ValueError("another format")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return names  # no readable kgpt2 manifest: nothing in here is known to be ours
    return [n for n in names if n not in known or not (folder / n).is_file()]


def read_manifest(folder: Path) -> dict:
    """The manifest of the shard set in `folder`, or {} when there is none to read."""
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write and fsync the manifest, the last file of a set before it is published."""
    with open(folder / MANIFEST, "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=2))
        f.flush()
        os.fsync(f.fileno())


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out`, moving a previous shard set aside first.

    Two renames, not one: rename(2) replaces only an empty folder. A kill
    between them leaves the old set as `.<out>.kgpt2-old-<pid>`, which
    `clean_leftovers` renames back; the old set is removed only once the
    new one is in place.
    """
    if out.is_dir() and any(out.iterdir()):
        old = temp_folder(out, "old")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)  # also replaces an empty folder, in one step


_ADVICE = {
    errno.ENOSPC: ("the disk is full", "free some space or choose another --out"),
    errno.EDQUOT: ("the disk quota is used up", "free some space or choose another --out"),
    errno.EROFS: ("it is on a read-only file system", "choose a writable folder for --out"),
    errno.EACCES: ("permission denied", "choose a folder you may write to, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you may write to, or fix its permissions"),
    errno.ENOTDIR: ("a part of that path is a file, not a folder", "choose another path"),
    errno.EEXIST: ("a file is in the way", "choose another path"),
    errno.EISDIR: ("it is a folder, not a file", "choose another path"),
    errno.ENOENT: ("it does not exist", "check the path"),
}


def os_error_sentence(e: OSError, out: Path, tmp: Path | None = None, source: Path | None = None) -> str:
    """One sentence for an OS error of `prepare`: which path, what went wrong, what to do.

    A path inside this prepare's temporary folder, its lock file (or no
    path: a failed write) is reported as `out`, the folder the user named.
    """
    path = Path(e.filename) if e.filename else out
    if (tmp is not None and _is_within(path, tmp)) or path == PrepareLock(out).path:
        path = out
    what, advice = _ADVICE.get(e.errno, (e.strerror or str(e) or type(e).__name__, "check that path"))
    if source is not None and _is_within(path, source):
        return f"cannot read the source '{path}': {what}; check the path and that you may read it"
    where = f"'{out}'" if path == out else f"'{out}' ('{path}')"
    return f"cannot write the shards to {where}: {what}; {advice}"
