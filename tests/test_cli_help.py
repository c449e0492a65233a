"""What `kgpt2 VERB --help` tells a new user holds: every argument says what it does, every default it has is
named (and is the parser's), `latest` is described as each verb picks it, and `-q` quiets every verb."""

import argparse
import json
import re
import shutil

import pytest

from kgpt2.cli import build_parser
from kgpt2.errors import UserError
from kgpt2.training.checkpoints import CheckpointManager

pytestmark = pytest.mark.backend_neutral  # argparse text and the CLI's own wiring; the model is a tiny one


def _arguments(parser, path=()):
    """(verb, action) for every argument of every verb, positionals included, --help and --version left out."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _arguments(sub, (*path, name))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield " ".join(path), action


def _name(action) -> str:
    return action.option_strings[-1] if action.option_strings else action.metavar or action.dest


def _help(verb: str, option: str) -> str:
    return next(a.help for v, a in _arguments(build_parser()) if v == verb and option in a.option_strings)


def test_every_argument_says_what_it_does_positionals_too():
    """`pretrain {init,summary}`, `tokenizer {train}` and the key=value lists of pretrain and quickstart were
    listed with no word of what they are."""
    silent = sorted(f"{verb} {_name(a)}" for verb, a in _arguments(build_parser())
                    if not a.help or a.help == argparse.SUPPRESS)
    assert not silent, f"arguments without help: {silent}"


def test_every_default_is_named_in_its_help_and_is_the_parsers():
    """An option that has a default names it, as the parser has it: serve's --slots (8) and --max-queue (64),
    prepare's --splits (auto) and --preset (gpt2_base_en), tokenizer's --min-frequency (2), export's --checkpoint
    (latest) and the --host of serve and demo did not say theirs. Empty defaults (None, False, 0, "") mean
    "not given" and are left out."""
    unnamed = []
    for verb, a in _arguments(build_parser()):
        if not a.default or a.default == argparse.SUPPRESS:
            continue
        d = re.escape(str(a.default))
        if not re.search(rf"default: {d}\b|\b{d} \(default", a.help):
            unnamed.append(f"{verb} {_name(a)} (default {a.default!r}): {a.help!r}")
    assert not unnamed, "\n".join(unnamed)


def test_latest_is_described_as_generate_and_evaluate_pick_it(tiny_run, tmp_path, kgpt2_cli):
    """generate's --help said `latest` is "the newest intact one", and generate (and serve and export, through
    Run.restore) passed over a checkpoint whose optimizer state is damaged, though they load only the weights.
    Now they use it, as evaluate does, and every help says "the newest whose weights verify"."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    newest = CheckpointManager(run).list()[-1]
    optimizer = bytearray((newest.path / "optimizer.npz").read_bytes())
    optimizer[len(optimizer) // 2] ^= 0xFF  # same size, its checksum broken; weights.npz untouched
    (newest.path / "optimizer.npz").write_bytes(bytes(optimizer))

    generated = kgpt2_cli("generate", "--run", run, "--prompt", "The", "--sampler", "greedy", "--max-new-tokens", 2)
    assert generated.returncode == 0, generated.stderr
    assert "is damaged" not in generated.stderr  # used, not passed over
    for verb in ("generate", "serve", "export", "evaluate"):
        assert "latest (default: the newest whose weights verify)" in _help(verb, "--checkpoint"), verb

    scored = kgpt2_cli("-q", "evaluate", "--run", run, "--split", "validation", "--max-batches", 1, "--json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout[scored.stdout.index("["):])[-1]["model"] == newest.id  # scored all the same


def test_quiet_quickstart_asks_for_no_progress_lines(monkeypatch, kgpt2_cli, tmp_path):
    """`kgpt2 -q quickstart` printed Keras' progress line for every epoch on stdout: its -q never reached the
    training (`quickstart(..., verbose=...)`), as it does for train and align."""
    import kgpt2.quickstart

    asked = []

    def quickstart(checkpoints_root, overrides, verbose="auto"):
        asked.append(verbose)
        raise UserError("stopped here: the verbosity is what this test checks")

    monkeypatch.setattr(kgpt2.quickstart, "quickstart", quickstart)
    for argv in (["-q", "quickstart"], ["quickstart", "-q"], ["quickstart"]):
        assert kgpt2_cli(*argv, cwd=tmp_path).returncode == 2
    assert asked == [0, 0, "auto"]
