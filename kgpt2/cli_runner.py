"""How a verb's run becomes what a shell sees: kgpt2's progress lines on stderr while it runs, and its end as an
exit status -- 0; 2 with one `kgpt2: error: ...` line for a user's mistake or running out of memory; 130 for
Ctrl-C and 143 for SIGTERM (`timeout`, `kill`, a notebook or job scheduler stopping it), each saying what it left
behind; 141 when the reader of stdout went away. Anything else is a bug and keeps its traceback. (stdlib only,
so `kgpt2 --help` stays fast.)

    >>> import argparse
    >>> from kgpt2.errors import UserError
    >>> def handler(args):
    ...     raise UserError("config file 'x.toml' does not exist")
    >>> run_verb(argparse.Namespace(handler=handler, verb="train", interrupted=""))  # the sentence on stderr
    2
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

from kgpt2.errors import TRAINING_ADVICE, UserError, is_out_of_memory, out_of_memory_sentence


@contextlib.contextmanager
def progress_lines_on_stderr(quiet: bool):
    """kgpt2's own progress lines on stderr (other libraries' INFO logs stay off) while a verb runs; the
    `kgpt2` logger is put back afterwards, so `main` called again in one process (a notebook, a test)
    neither prints each line twice nor leaves the logger cut off from the caller's handlers."""
    logger = logging.getLogger("kgpt2")
    saved = logger.handlers[:], logger.level, logger.propagate
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("kgpt2: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers[:], logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])


def _stdout_to_devnull() -> None:
    """After the reader of stdout went away: send what is left nowhere, so the exit flush raises nothing."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a notebook, a test's capture)
        pass


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: a KeyboardInterrupt, so a verb unwinds as after Ctrl-C (its lock
    released, its temporary folders removed) instead of vanishing without a word."""


def _raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM (during the unwinding) ends it at once
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises `Terminated` while a verb runs; the handler found is put back afterwards. Not where no
    handler can be set (a thread other than the main one), nor where SIGTERM is ignored (as the parent asked).
    `kgpt2 serve` sets its own for uvicorn's graceful shutdown and puts this one back after it."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else signal.SIG_IGN
    if previous == signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:  # None: a handler set outside Python, which cannot be put back; the default is the nearest
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _stopped(args, e: KeyboardInterrupt) -> int:
    """The line a stopped verb leaves, and its status: 128 + the signal's number, as a shell reports it."""
    said = "stopped (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
    print(f"kgpt2: {said}" + (f"; {args.interrupted}" if args.interrupted else ""), file=sys.stderr)
    return 143 if isinstance(e, Terminated) else 130


def run_verb(args) -> int:
    try:
        with sigterm_as_interrupt():
            args.handler(args)
        sys.stdout.flush()  # a reader gone (`kgpt2 recipes | head -1`) shows here, not as a traceback at exit
    except BrokenPipeError:
        _stdout_to_devnull()
        return 141  # 128 + SIGPIPE, what a shell reports for any program cut off this way
    except UserError as e:
        print(f"kgpt2: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
        return _stopped(args, e)
    except Exception as e:  # noqa: BLE001 - running out of memory is a sentence for every verb; the rest re-raised
        if not is_out_of_memory(e):
            raise
        advice = TRAINING_ADVICE if args.verb in ("align", "quickstart") else (
            "use a smaller batch or model, or --weights int8 where the verb takes it")
        print(f"kgpt2: error: {out_of_memory_sentence(e, f'kgpt2 {args.verb}', False, advice)}", file=sys.stderr)
        return 2
    return 0


def exit_process(code: int) -> None:
    """End the process with a verb's status. After Ctrl-C (130) or SIGTERM (143) it leaves at once, its output
    flushed: XLA's compiler threads may still be at work (a Ctrl-C in the first `fit` of a training), and Python's
    teardown under them crashed the process (SIGSEGV, status 139, after the "interrupted" line) in 4 of 13 tries."""
    if code in (130, 143):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
