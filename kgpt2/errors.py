"""The one exception kgpt2 raises for a user's mistake.

The CLI prints its message as one line and exits with status 2; nothing else
(no traceback) reaches the terminal. Library callers can catch it.

    >>> from kgpt2.errors import UserError
    >>> str(UserError("config file 'x.toml' does not exist"))
    "config file 'x.toml' does not exist"
"""

import errno
import os
import re
import shutil
import socket
import urllib.error


class UserError(Exception):
    """Bad input from the user: a one-sentence message says what and where."""


class NoNetworkError(UserError):
    """A download that the missing network stopped (`load_failure`): what a step that can go on without it
    (`kgpt2 train --dry-run`) tells apart from every other refusal."""


_ADVICE = {  # errno name -> (what happened, what to do)
    "ENOSPC": ("the disk is full", "free some space or use a bigger disk"),
    "EDQUOT": ("the disk quota is used up", "free some space or use a bigger disk"),
    "EROFS": ("the file system is read-only", "use a writable folder"),
    "EACCES": ("permission denied", "make it writable for you or use another folder"),
    "EPERM": ("operation not permitted", "make it writable for you or use another folder"),
    "ENOTDIR": ("a file stands where a folder is needed", "move that file away"),
    "EEXIST": ("a file is in the way", "move that file away"),
    "EISDIR": ("a folder stands where a file is needed", "move that folder away"),
}


# Python's str(OSError), Rust's io::Error, HDF5's "file write failed: ..., errno = 28, error message = ..." (h5py)
_ERRNO = re.compile(r"\[Errno (\d+)\]|os error (\d+)|\berrno = (\d+)")


def as_os_error(e: BaseException) -> OSError:
    """`e` as an OSError with an errno where its text names one: shutil.Error (a list of (src, dst, why),
    no errno; its first entry speaks) and errors of native code such as safetensors' SafetensorError.

    >>> as_os_error(RuntimeError("Error while serializing: No space left on device (os error 28)")).strerror
    'No space left on device'
    """
    if isinstance(e, OSError) and e.errno is not None:
        return e
    filename, text = getattr(e, "filename", None), str(e)
    if isinstance(e, shutil.Error) and e.args and isinstance(e.args[0], list) and e.args[0]:
        first = e.args[0][0]  # its dst is inside a temp folder about to go: named by the caller's `doing`
        filename, text = None, str(first[2] if isinstance(first, tuple) and len(first) == 3 else first)
    m = _ERRNO.search(text)
    if m:
        code = int(m[1] or m[2] or m[3])
        return OSError(code, os.strerror(code), filename)
    text = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return OSError(None, text if len(text) <= 200 else text[:200] + "...", filename)


def _what_and_advice(e: OSError, unknown_advice: str) -> tuple[str, str]:
    """(what happened, what to do) for `e` (an OSError with its errno, `as_os_error`); a full disk keeps the
    figures kgpt2's own free-space check put after the standard text (`kgpt2.io.check_room`)."""
    known = _ADVICE.get(errno.errorcode.get(e.errno, ""))
    if known is None:
        return e.strerror or str(e) or type(e).__name__, unknown_advice
    what, advice = known
    standard = os.strerror(e.errno)
    if (e.strerror or "").startswith(standard + " ("):
        what += e.strerror[len(standard):]
    return what, advice


def os_error_reason(e: BaseException) -> str:
    """What went wrong and what to do, for an OS error (or one that only says which, see `as_os_error`): the
    words every full disk is told in, never a library's multi-line text.

    >>> os_error_reason(OSError("Can't synchronously write data (file write failed: time = ...\\n, errno = 28, ...)"))
    'the disk is full; free some space or use a bigger disk'
    """
    what, advice = _what_and_advice(as_os_error(e), "")
    return f"{what}; {advice}" if advice else what


def os_error_sentence(e: BaseException, doing: str) -> str:
    """One sentence for an OS error met while `doing` something: path, what, what to do. `e` may also be
    an error that only says which OS error it was (see `as_os_error`).

    >>> import errno, os
    >>> os_error_sentence(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "runs/a/logs/steps.csv"), "training")
    "training failed at 'runs/a/logs/steps.csv': the disk is full; free some space or use a bigger disk, then run the same command again"
    """
    e = as_os_error(e)
    what, advice = _what_and_advice(e, "check that path")
    where = f" at '{e.filename}'" if e.filename else ""
    return f"{doing} failed{where}: {what}; {advice}, then run the same command again"


# What JAX/XLA ("RESOURCE_EXHAUSTED: Out of memory ...", "Out of memory allocating N bytes"), TensorFlow
# (ResourceExhaustedError "OOM when allocating tensor") and Python (MemoryError) say when memory runs out.
_OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM when allocating", "MemoryError",
                  "ResourceExhaustedError")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is the backend (or Python) running out of device or host memory.

    >>> is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.37GiB"))
    True
    >>> is_out_of_memory(RuntimeError("INVALID_ARGUMENT: shapes differ"))
    False
    """
    text = f"{type(error).__name__} {error}"
    return any(s in text for s in _OUT_OF_MEMORY)


TRAINING_ADVICE = ("lower train.batch_size (train.gradient_accumulation_steps keeps the sequences per optimizer step), "
                   "set train.remat = true, or use LoRA")


def out_of_memory_sentence(error: BaseException, doing: str, on_gpu: bool, advice: str = TRAINING_ADVICE) -> str:
    """One sentence for a step that ran out of memory: what the backend said (its first line) and what to change.

    >>> out_of_memory_sentence(RuntimeError("Out of memory allocating 100454760144 bytes.\\n(traceback)"), "training run 'r'", False)
    "training run 'r' ran out of memory (Out of memory allocating 100454760144 bytes.); lower train.batch_size (train.gradient_accumulation_steps keeps the sequences per optimizer step), set train.remat = true, or use LoRA, then run the same command again"
    """
    said = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    said = said.split("Error dispatching computation: ")[-1][:200]
    return f"{doing} ran out of {'GPU ' if on_gpu else ''}memory ({said}); {advice}, then run the same command again"


# Exceptions (anywhere in the chain) that mean "the download could not reach its host". requests'
# and urllib3's own classes are matched by name: neither is imported for this.
_NETWORK_ERRORS = (socket.gaierror, socket.timeout, ConnectionError, TimeoutError, urllib.error.URLError)
_NETWORK_ERROR_NAMES = {"ConnectionError", "ConnectTimeout", "MaxRetryError", "NameResolutionError",
                        "NewConnectionError", "ReadTimeout", "Timeout"}


def _is_network_error(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, _NETWORK_ERRORS) or type(e).__name__ in _NETWORK_ERROR_NAMES:
            return True
        e = e.__cause__ or e.__context__
    return False


def load_failure(what: str, e: Exception, hint: str, cache: str = "the KerasHub cache") -> UserError:
    """One sentence for a preset that did not load: a network failure says so, not urllib3's 300 characters.

    `cache` names where the download would have been found offline (an hf:// handle's files go to
    the Hugging Face cache, the rest to KerasHub's).

        >>> str(load_failure("model preset 'gpt2_base_en'", OSError("Max retries exceeded"), "hint"))
        "could not load model preset 'gpt2_base_en' (Max retries exceeded); hint"
        >>> import socket
        >>> try:
        ...     raise OSError("HTTPSConnectionPool(host='api.kaggle.com') ...") from socket.gaierror(-2, "unknown")
        ... except OSError as e:
        ...     print(str(load_failure("model preset 'gpt2_base_en'", e, "hint")))
        could not download model preset 'gpt2_base_en': no network connection (and it is not in the KerasHub cache); hint
    """
    if _is_network_error(e):
        return NoNetworkError(f"could not download {what}: no network connection (and it is not in {cache}); {hint}")
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    reason = text if len(text) <= 200 else text[:200] + "..."
    return UserError(f"could not load {what} ({reason}); {hint}")
