"""How a verb's run becomes what a shell sees: kgpt2's progress lines on stderr while it runs, and its end as an
exit status -- 0; 2 with one `kgpt2: error: ...` line for a user's mistake or running out of memory; 130 for
Ctrl-C, saying what it left behind; 141 when the reader of stdout went away. Anything else is a bug and keeps
its traceback. (stdlib only, so `kgpt2 --help` stays fast.)

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
import sys

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


def run_verb(args) -> int:
    try:
        args.handler(args)
        sys.stdout.flush()  # a reader gone (`kgpt2 recipes | head -1`) shows here, not as a traceback at exit
    except BrokenPipeError:
        _stdout_to_devnull()
        return 141  # 128 + SIGPIPE, what a shell reports for any program cut off this way
    except UserError as e:
        print(f"kgpt2: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kgpt2: interrupted" + (f"; {args.interrupted}" if args.interrupted else ""), file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - running out of memory is a sentence for every verb; the rest re-raised
        if not is_out_of_memory(e):
            raise
        advice = TRAINING_ADVICE if args.verb in ("align", "quickstart") else (
            "use a smaller batch or model, or --weights int8 where the verb takes it")
        print(f"kgpt2: error: {out_of_memory_sentence(e, f'kgpt2 {args.verb}', False, advice)}", file=sys.stderr)
        return 2
    return 0


def exit_process(code: int) -> None:
    """End the process with a verb's status. After Ctrl-C (130) it leaves at once, its output flushed: XLA's
    compiler threads may still be at work (a Ctrl-C in the first `fit` of a training), and Python's teardown
    under them crashed the process (SIGSEGV, status 139, after the "interrupted" line) in 4 of 13 tries."""
    if code == 130:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
