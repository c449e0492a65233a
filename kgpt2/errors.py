"""The one exception kgpt2 raises for a user's mistake.

The CLI prints its message as one line and exits with status 2; nothing else
(no traceback) reaches the terminal. Library callers can catch it.

    >>> from kgpt2.errors import UserError
    >>> str(UserError("config file 'x.toml' does not exist"))
    "config file 'x.toml' does not exist"
"""

import errno


class UserError(Exception):
    """Bad input from the user: a one-sentence message says what and where."""


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


def os_error_sentence(e: OSError, doing: str) -> str:
    """One sentence for an OS error met while `doing` something: path, what, what to do.

    >>> import errno, os
    >>> os_error_sentence(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "runs/a/logs/steps.csv"), "training")
    "training failed at 'runs/a/logs/steps.csv': the disk is full; free some space or use a bigger disk, then run the same command again"
    """
    what, advice = _ADVICE.get(errno.errorcode.get(e.errno, ""), (e.strerror or str(e) or type(e).__name__, "check that path"))
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
