"""One training process per run: an OS file lock on `<run>/.lock`.

`train` and `align` hold the lock for their whole life. It is an
`fcntl.flock` on an open file, so the OS frees it when the process ends in
any way (SIGKILL, a Colab disconnect, a crash): no stale lock to delete by
hand. The file records who holds it (pid, host, since when) so a second
process can say so in one sentence. Written by hand: the standard library's
`fcntl.flock` is the whole mechanism, and the lock libraries on PyPI
(filelock, portalocker) add nothing kgpt2 needs but the holder's name,
which they do not record. Where `fcntl` does not exist (Windows) the lock
is a no-op.

    >>> import tempfile
    >>> from kgpt2.lock import RunLock
    >>> d = tempfile.mkdtemp()
    >>> with RunLock(d) as lock:
    ...     lock.holder()["pid"] == __import__("os").getpid()
    True
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

from kgpt2.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; training still works
    fcntl = None

LOCK_FILE = ".lock"
TABLES_LOCK_FILE = ".tables.lock"  # held only while a table is read, merged and written: not the training lock
NO_LOCKS_HERE = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # flock's answers where locks are not supported
log = logging.getLogger("kgpt2")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def owner_gone(name: str) -> bool:
    """Whether the temp folder `name` (`.ckpt-N.tmp-<pid>-*`, `.trash-*-<pid>`) belongs to no live process but us."""
    parts = name.replace(".tmp-", "-").split("-")
    pids = [int(p) for p in parts[2:] if p.isdigit()] if name.startswith(".ckpt-") else [int(parts[-1])] if parts[-1].isdigit() else []
    if not pids:
        return False  # not named by kgpt2 with an owner: not ours to remove
    pid = pids[0]
    return pid == os.getpid() or not pid_alive(pid)


class RunLock:
    """The lock of one run folder; `with RunLock(run_dir):` or `acquire()` / `release()`."""

    def __init__(self, run_dir, name: str = LOCK_FILE):
        self.path = Path(run_dir) / name
        self._fd = None
        self._made: list[Path] = []  # the folders acquire() created, deepest first
        self._made_file = False

    def holder(self) -> dict:
        """Who holds (or last held) the lock: {"pid", "host", "since"}, or {}."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def busy_sentence(self, who: str) -> str:
        """The refusal when another process holds the lock; `who`: "process N on HOST since WHEN"."""
        return (f"run '{self.path.parent}' is in use by another kgpt2 process ({who}); "
                "wait for it to finish or stop it, or choose another run name")

    def _refusal(self) -> UserError:
        h = self.holder()
        who = f"process {h.get('pid', '?')} on {h.get('host', '?')} since {h.get('since', '?')}"
        return UserError(self.busy_sentence(who))

    def check_free(self) -> None:
        """Refuse now, without taking the lock, when another process holds it (a quick answer before slow work;
        `acquire` still decides)."""
        if fcntl is None or self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return  # no lock file (or none readable): nobody holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._refusal() from None
        except OSError:
            pass  # no locks on this file system: `acquire` says so
        finally:
            os.close(fd)  # frees the shared lock

    def acquire(self) -> RunLock:
        if fcntl is None or self._fd is not None:
            return self
        self._made = [p for p in [self.path.parent, *self.path.parent.parents] if not p.exists()]
        self._made_file = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while (fd := self._lock_file()) is None:
            pass  # the holder removed the file as it let go: lock the one there now
        # The holder's name, written in place: the file is ours while locked.
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        return self

    def _lock_file(self) -> int | None:
        """An open descriptor of the lock file, flocked; None when the file was removed (or replaced) while we
        waited for it, as a releasing holder that removes its file does (`kgpt2.data.shard_folder.PrepareLock`)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._refusal() from None
        except OSError as e:
            if e.errno not in NO_LOCKS_HERE:
                os.close(fd)
                raise
            # An NFS mount without its lock daemon, some network file systems: training works, unguarded.
            log.warning("the file system of '%s' does not support file locks (%s); a second kgpt2 process on this "
                        "run will not be stopped, so start only one", self.path.parent, e.strerror or e)
            return fd
        try:
            now, ours = os.stat(self.path), os.fstat(fd)
            same = (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino)
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return None
        return fd

    def release(self) -> None:
        if self._fd is not None:
            self._remove_if_unused()
            os.close(self._fd)  # closing the descriptor frees the flock
            self._fd = None

    def _remove_if_unused(self) -> None:
        """A run refused after its lock was taken (bad preference data, a missing start checkpoint) leaves no empty
        folder holding only `.lock`: the lock file and the folders acquire() made are removed while still locked,
        if nothing else was written there."""
        if not self._made_file:
            return
        with contextlib.suppress(OSError):
            if [p.name for p in self.path.parent.iterdir()] != [LOCK_FILE]:
                return
            self.path.unlink()
            for folder in self._made:
                folder.rmdir()  # stops at the first one holding something else

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def tables_lock(run_dir):
    """Hold `<run>/.tables.lock` while a run's evaluation table is read, merged and rewritten, so two `kgpt2
    evaluate` at once (two Colab cells, a script per checkpoint) add their rows instead of one keeping only its own.

    It waits for the other process (each holds it for one small write) and is not the run's training lock, so
    evaluating a run that is training works. Where locks are not supported it guards nothing, like RunLock.
    """
    if fcntl is None:
        yield
        return
    fd = os.open(Path(run_dir) / TABLES_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in NO_LOCKS_HERE:
                raise
        yield
    finally:
        os.close(fd)  # frees the flock
