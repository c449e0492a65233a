"""The `kgpt2` parser: the registry of verbs (`verb`), the parser made from it, and how a command line is read
(`key=value` overrides wherever they stand, OUT or --out settled). Stdlib only, so `kgpt2 --help` stays fast;
the verbs themselves are registered by `kgpt2.cli`, their options are in `kgpt2.cli_options`.

    >>> import kgpt2.cli  # registers the verbs
    >>> args = parse_args(["export", "--run", "r", "--to", "hf", "o", "-q"])
    >>> args.out, args.quiet, args.keras_import
    ('o', True, 'first')
    >>> parse_args(["train", "a=1", "--config", "c.toml", "b=2"]).overrides
    ['a=1', 'b=2']
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata

from kgpt2.cli_args import settle_output_folder

VERBS = {}  # name -> (factory, help, needs Keras, what Ctrl-C leaves behind); the factory adds the options
KERAS_IMPORTS = ("first", "late", "never")


def verb(name, help, options=None, keras: str = "first", interrupted: str = ""):
    """Register a verb's handler. `options(parser)` adds the verb's options (`kgpt2.cli_options`); `keras`: when
    Keras is imported -- "first" (before the verb runs), "late" (the verb imports it itself,
    `backend.import_keras_quietly`, after the checks that need none, so a mistyped path is answered at once, not
    after ~10 s of TensorFlow's start-up) or "never" (TensorFlow's start-up skipped); `interrupted`: what Ctrl-C
    leaves behind, said after "kgpt2: interrupted; "."""
    if keras not in KERAS_IMPORTS:
        raise ValueError(f"keras={keras!r}: one of {KERAS_IMPORTS}")

    def register(handler):
        def factory(p: argparse.ArgumentParser):
            if options is not None:
                options(p)
            return handler

        VERBS[name] = (factory, help, keras, interrupted)
        return handler

    return register


def _version() -> str:
    try:
        return importlib.metadata.version("kgpt2")
    except importlib.metadata.PackageNotFoundError:  # the source tree on PYTHONPATH, not installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kgpt2", description="Fine-tune GPT-2 in stages with Keras 3 / KerasHub.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    parser.add_argument("--version", action="version", version=f"kgpt2 {_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name, (factory, help, keras, interrupted) in VERBS.items():
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=factory(p), keras_import=keras, interrupted=interrupted)
        with contextlib.suppress(argparse.ArgumentError):  # serve has its own, with its own help
            # `kgpt2 train ... -q` as people type it; SUPPRESS: leaving it out keeps what `kgpt2 -q` set
            p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                           help="only warnings and results (the same as kgpt2 -q VERB)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, with `key=value` overrides taken wherever they stand: argparse fills a verb's
    `overrides` list only up to the first option after its other positionals (`pretrain init --config C
    key=value` left key=value unrecognized)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *(w for w in extra if "=" in w and not w.startswith("-"))]
        extra = [w for w in extra if "=" not in w or w.startswith("-")]
    explain = args.__dict__.pop("unrecognized", None)  # a verb's own line for options it has not (align_options)
    options = list(dict.fromkeys(w.split("=", 1)[0] for w in extra if w.startswith("-")))
    if options and explain is not None:
        parser.error(explain(options))
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    settle_output_folder(args)
    return args
