"""The argument types and shapes the CLI's verbs share (stdlib only, so `kgpt2 --help` stays fast).

    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> output_folder(p, "new output directory")
    >>> [settle_output_folder(a) or a.out for a in (p.parse_args(["exported"]), p.parse_args(["--out", "exported"]))]
    ['exported', 'exported']
"""

from __future__ import annotations

import argparse


def output_folder(p: argparse.ArgumentParser, help: str) -> None:
    """The folder a verb writes, as OUT or as `--out OUT`: `prepare` and `tokenizer train` take --out, so
    `kgpt2 export ... --out DIR` was refused ("unrecognized arguments: --out"). One of the two, once;
    `settle_output_folder` checks that after parsing. Not argparse's mutually exclusive group: it answered
    `export --format hf --out o` (no such option) with "argument out: not allowed with argument --out",
    because the stray "hf" filled OUT, before it could name the unknown --format."""
    p.add_argument("out_word", nargs="?", metavar="out", help=help)
    p.add_argument("--out", metavar="OUT", help="the same, as an option")
    p.set_defaults(output_parser=p)


def settle_output_folder(args: argparse.Namespace) -> None:
    """After the unknown words were refused: exactly one of OUT and --out, as `args.out`."""
    parser = args.__dict__.pop("output_parser", None)
    if parser is None:
        return
    word = args.__dict__.pop("out_word")
    if word is not None and args.out is not None:
        parser.error("argument --out: not allowed with argument out")
    if word is None and args.out is None:
        parser.error("one of the arguments out --out is required")
    args.out = args.out if args.out is not None else word


def unescape(text: str | None) -> str | None:
    """Backslash escapes typed on a command line (`\\n\\n`) -> the characters, other text kept."""
    if not text or "\\" not in text:
        return text
    # unicode_escape reads bytes as latin-1: keep non-ASCII text intact through it.
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def whole_number(low: int, high: int | None = None):
    """An argparse `type`: an integer from `low` (to `high`); anything else is argparse's one-line usage error.

    >>> whole_number(1, 65535)("8000")
    8000
    >>> whole_number(1)("0")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be a whole number of at least 1, got '0'
    """
    span = f"from {low} to {high}" if high is not None else f"of at least {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a whole number {span}, got {text!r}")
        return value

    return parse


PORT = whole_number(1, 65535)
RUN_HELP = "run directory, e.g. checkpoints/quickstart"
# generate, serve and export load only the weights (kgpt2.run.Run.restore), so only they must verify: a checkpoint
# whose optimizer state is damaged is still used, as evaluate uses it
CHECKPOINT_HELP = "latest (default: the newest whose weights verify), best, stage-N, ckpt-N or N, or base"

