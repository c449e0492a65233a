"""The walking skeleton: config, CLI errors, stage plan, a run dir that works."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kgpt2.config import load_config
from kgpt2.errors import UserError
from kgpt2.training.run_logs import read_steps

pytestmark = pytest.mark.backend


def test_config_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('run = "x"\n[train]\nbatch_size = 2\nstages = [1, "rest"]\n')
    cfg = load_config(path, ["train.batch_size=4", "lora.rank=16", "model.preset=gpt2_medium_en"])
    assert (cfg.run, cfg.train.batch_size, cfg.lora.rank, cfg.train.stages) == ("x", 4, 16, [1, "rest"])
    assert cfg.model.preset == "gpt2_medium_en"
    assert cfg.lora.alpha == 32.0 and cfg.train.stages != load_config(None).train.stages


@pytest.mark.parametrize("override, message", [
    ("train.bogus=1", "unknown config key 'train.bogus'"),
    ("train.batch_size=four", "should be int"),
    ("nokey", "not of the form key=value"),
])
def test_config_errors(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("args, message", [
    (["train", "--config", "missing.toml"], "config file 'missing.toml' does not exist"),
    (["train", "train.nope=1"], "unknown config key 'train.nope'"),
    (["train", "model.preset=gpt2_nonexistent", "data.shards=x"], "unknown GPT-2 preset 'gpt2_nonexistent'"),
    (["prepare", "--source", "pydoc", "--out", "o", "--tokenizer", "."], "holds no GPT-2 tokenizer files"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, message, kgpt2_cli):
    r = kgpt2_cli(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_missing_source(tmp_path, pydoc_tokenizer_dir, kgpt2_cli):
    tok = pydoc_tokenizer_dir
    r = kgpt2_cli("prepare", "--source", "missing.jsonl", "--out", "o", "--tokenizer", str(tok), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "kgpt2: error: source 'missing.jsonl' does not exist"


def test_cli_empty_corpus(tmp_path, pydoc_tokenizer_dir, kgpt2_cli):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("   \n")
    tok = pydoc_tokenizer_dir
    r = kgpt2_cli("prepare", "--source", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--tokenizer", str(tok), cwd=tmp_path)
    assert r.returncode == 2 and "holds no documents" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_every_verb_has_help(kgpt2_cli):
    from kgpt2.cli import VERBS

    for name in ["prepare", "train", "evaluate", "generate", "demo", "quickstart"]:
        assert name in VERBS
        r = kgpt2_cli(name, "--help")
        assert r.returncode == 0 and "usage: kgpt2 " + name in r.stdout


def test_every_option_says_what_it_does_and_the_version_is_shown(kgpt2_cli):
    """generate's --run, --checkpoint, --prompt, --sampler ..., serve's and demo's --port and --host, prepare's
    --contents had no help text, and `kgpt2 --version` was "the following arguments are required: VERB"."""
    import argparse
    import importlib.metadata

    from kgpt2.cli import build_parser

    def options(parser, path=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from options(sub, (*path, name))
            elif action.option_strings:
                yield " ".join(path), action

    silent = sorted({f"{verb} {a.option_strings[-1]}" for verb, a in options(build_parser())
                     if not a.help or a.help == argparse.SUPPRESS})
    assert not silent, f"options without help: {silent}"
    r = kgpt2_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"kgpt2 {importlib.metadata.version('kgpt2')}"


@pytest.mark.parametrize("argv, overrides", [
    (["pretrain", "init", "--config", "c.toml", "model.num_layers=2"], ["model.num_layers=2"]),
    (["train", "a=1", "--config", "c.toml", "b=2", "--device", "cpu", "c=3"], ["a=1", "b=2", "c=3"]),
    (["align", "--device", "cpu", "a=1"], ["a=1"]),
])
def test_overrides_may_follow_the_options(argv, overrides):
    from kgpt2.cli import parse_args

    args = parse_args(argv)
    assert args.overrides == overrides and args.config in ("c.toml", None)


@pytest.mark.parametrize("argv", [
    ["export", "--run", "r", "--to", "hf", "--out", "o"], ["export", "--out", "o", "--run", "r", "--to", "hf"],
    ["export", "--run", "r", "--to", "hf", "o"], ["import", "m.weights.h5", "--out", "o", "--tokenizer", "t"],
])
def test_export_and_import_take_their_folder_as_out_too(argv):
    """`prepare` and `tokenizer train` write to --out; `export ... --out o` was 'unrecognized arguments'."""
    from kgpt2.cli import parse_args

    assert parse_args(argv).out == "o"


@pytest.mark.parametrize("argv, error", [
    (["export", "--run", "r", "--to", "hf"], "one of the arguments out --out is required"),
    (["export", "--run", "r", "--to", "hf", "a", "--out", "b"], "argument --out: not allowed with argument out"),
])
def test_the_output_folder_is_given_once(argv, error, tmp_path, kgpt2_cli):
    r = kgpt2_cli(*argv, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().endswith(error), r.stderr


def test_unknown_words_are_still_refused(tmp_path, kgpt2_cli):
    for argv, word in ((["train", "--config", "c.toml", "--bogus", "a=1"], "--bogus"), (["recipes", "a", "b"], "b")):
        r = kgpt2_cli(*argv, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.strip().endswith(f"unrecognized arguments: {word}"), r.stderr


@pytest.mark.parametrize("argv", [
    ["evaluate", "--run", "r", "--max-batches", "0"], ["serve", "--run", "r", "--port", "99999"],
    ["demo", "--port", "-1"], ["tokenizer", "train", "--source", "s", "--out", "o", "--min-frequency", "-1"],
    ["prepare", "--source", "s", "--out", "o", "--threads", "0"], ["evaluate", "--run", "r", "--max-batches", "x"],
    ["serve", "--run", "r", "--slots", "0"], ["serve", "--run", "r", "--max-queue", "-1"],
])
def test_a_number_out_of_range_is_a_usage_error(argv, tmp_path, kgpt2_cli):
    """Each was a traceback from deep inside (Keras' map_structure, socket.bind, tokenizers, a thread pool)."""
    r = kgpt2_cli(*argv, cwd=tmp_path)
    flag, value = argv[-2:]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    span = {"--port": "from 1 to 65535", "--max-queue": "of at least 0"}.get(flag, "of at least 1")
    assert r.stderr.strip().splitlines()[-1].endswith(f"error: argument {flag}: must be a whole number {span}"
                                                      f", got '{value}'"), r.stderr
    assert not list(tmp_path.iterdir()), "nothing is made"


def test_a_reader_that_goes_away_is_no_traceback(tmp_path):
    """`kgpt2 recipes | head -1`, `kgpt2 pretrain summary --json | head`: the pipe closes before kgpt2 writes."""
    p = subprocess.Popen([sys.executable, "-m", "kgpt2.cli", "recipes"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=tmp_path)
    p.stdout.close()  # long before the interpreter has even imported kgpt2
    err = p.communicate(timeout=120)[1].decode()
    assert (p.returncode, err) == (141, "")


def test_run_dir_holds_config_checkpoints_logs_metrics(tiny_run):
    files = {p.name for p in tiny_run.iterdir()}
    assert {"config.json", "stages.json", "stages.csv", "loss.png", "stage-1.weights.h5", "stage-2.weights.h5"} <= files
    assert any(name.startswith("ckpt-") for name in files)
    stages = json.loads((tiny_run / "stages.json").read_text())
    assert [s["stage"] for s in stages] == [1, 2] and all(s["perplexity"] > 1 for s in stages)
    assert all(0 <= s["accuracy"] <= 1 and s["loss"] > 0 for s in stages)
    steps = read_steps(tiny_run)
    assert len(steps) > 2 and steps["accuracy"].between(0, 1).all()


def test_generate_and_evaluate_from_run_cli(tiny_run, kgpt2_cli):
    r = kgpt2_cli("generate", "--run", str(tiny_run), "--prompt", "The", "--sampler", "greedy", "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The")
    q = kgpt2_cli("generate", "--run", str(tiny_run), "--prompt", "The", "--sampler", "greedy", "--max-new-tokens", "5",
                "--weights", "int8")  # int8 weights: the same greedy text on this model (tests/test_generate.py)
    assert q.returncode == 0, q.stderr
    assert q.stdout == r.stdout
    r = kgpt2_cli("evaluate", "--run", str(tiny_run), "--checkpoint", "all", "--compare", "base", "--json", "--max-batches", "2")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout[r.stdout.index("["):])
    assert rows[0]["model"] == "base" and len(rows) == 3
    # the trained stages beat the untrained base on held-out text
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_asking_for_a_missing_gpu_is_an_error_not_a_cpu_run(monkeypatch):
    import kgpt2.training.devices
    from kgpt2.training.devices import resolve_device

    monkeypatch.setattr(kgpt2.training.devices, "list_gpus", lambda: [])  # a host without a GPU, also on GPU hosts
    assert resolve_device("auto").keras_name == "cpu:0"
    backend = kgpt2.training.devices.keras.backend.backend()
    monkeypatch.setattr(kgpt2.training.devices, "has_nvidia_gpu", lambda: False)  # a Colab CPU runtime
    with pytest.raises(UserError, match=f"^device 'gpu:0' was asked for, but this machine has no GPU the {backend} "
                                        r"backend can see \(on Colab: Runtime > Change runtime type > a GPU\); "
                                        "--device cpu trains on the CPU$"):
        resolve_device("gpu:0")
    # A GPU the backend cannot use (`pip install jax` without CUDA on a rented GPU): the build to install.
    monkeypatch.setattr(kgpt2.training.devices, "has_nvidia_gpu", lambda: True)
    with pytest.raises(UserError, match=f"this machine has an NVIDIA GPU, but the {backend} backend sees none"):
        resolve_device("gpu")
    monkeypatch.setattr(kgpt2.training.devices, "list_gpus", lambda: [("NVIDIA T4", False)])
    with pytest.raises(UserError, match=r"^device 'gpu:1' was asked for, but the \w+ backend sees 1 GPU\(s\) "
                                        r"\(gpu:0 to gpu:0\)$"):
        resolve_device("gpu:1")
    with pytest.raises(UserError, match="not one of"):
        resolve_device("tpu")


def test_precision_policy_by_device():
    from kgpt2.training.devices import Device

    assert Device("cpu:0", "CPU", False).policy("auto") == "float32"
    assert Device("gpu:0", "Tesla T4", False).policy("auto") == "mixed_float16"  # loss scaled by Keras
    assert Device("gpu:0", "NVIDIA H100", True).policy("auto") == "mixed_bfloat16"
    assert Device("gpu:0", "NVIDIA H100", True).policy("float32") == "float32"


def test_schedule_warms_up_then_decays_across_stages(tiny_run):
    steps = read_steps(tiny_run)
    lr = steps["learning_rate"].tolist()
    peak = lr.index(max(lr))
    assert 0 < peak < len(lr) - 1  # warmup, then cosine decay
    assert all(a <= b for a, b in zip(lr[:peak], lr[1:peak + 1]))
    assert all(a >= b for a, b in zip(lr[peak:], lr[peak + 1:]))
    assert steps["stage"].nunique() == 2  # one curve over both stages
    assert steps["step"].tolist() == list(range(1, len(steps) + 1))


def test_tensorboard_events_read_by_tensorflow_and_tensorboard(tiny_run, assert_tensorboard_shows_steps):
    """kgpt2 writes the events without TensorFlow (kgpt2.training.run_logs.TensorBoardScalars); TensorFlow's own reader
    and TensorBoard's find each step's scalars in them once, the step CSV's values."""
    tf = pytest.importorskip("tensorflow")
    events = sorted((tiny_run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    loss = [(e.step, v.simple_value) for path in events for e in tf.compat.v1.train.summary_iterator(str(path))
            for v in e.summary.value if v.tag == "loss"]
    steps = read_steps(tiny_run)
    # One loss scalar per global step, counted across the stages' fit calls, the step CSV's value.
    assert [s for s, _ in loss] == steps["step"].tolist()
    assert [v for _, v in loss] == pytest.approx(steps["loss"].tolist(), rel=1e-6)
    assert_tensorboard_shows_steps(tiny_run)


def test_stage_ids_name_stage_end_checkpoints(tiny_run):
    from kgpt2.training.checkpoints import CheckpointManager

    mgr = CheckpointManager(tiny_run)
    ends = [c for c in mgr.list() if c.state.get("stage_end")]
    assert [mgr.get(f"stage-{i + 1}").id for i in range(len(ends))] == [c.id for c in ends]
    with pytest.raises(UserError, match="no checkpoint 'stage-9'"):
        mgr.get("stage-9")


def test_main_twice_in_one_process_prints_each_line_once_and_gives_the_logger_back(tmp_path, pydoc_tokenizer_dir,
                                                                                   capfd, monkeypatch):
    """A notebook calling `kgpt2.cli.main` again: the second call's progress line is printed once, not once per
    earlier call, and afterwards the `kgpt2` logger reaches the caller's handlers again."""
    import logging

    from kgpt2.cli import main

    logger = logging.getLogger("kgpt2")
    before = (logger.handlers[:], logger.level, logger.propagate)
    monkeypatch.chdir(tmp_path)
    shape = ["model.num_layers=1", "model.num_heads=2", "model.hidden_dim=16", "model.intermediate_dim=32",
             "model.max_sequence_length=32", "data.sequence_length=32", f"model.tokenizer={pydoc_tokenizer_dir}"]
    lines = []
    for out in ("first", "second"):
        capfd.readouterr()
        assert main(["pretrain", "--out", out, "init", *shape]) == 0
        lines.append([line for line in capfd.readouterr().err.splitlines() if "as preset" in line])
    assert len(lines[0]) == 1 and len(lines[1]) == 1, lines
    assert (logger.handlers, logger.level, logger.propagate) == before


def test_the_kgpt2_command_leaves_at_once_after_ctrl_c(monkeypatch):
    """`kgpt2 train` stopped by Ctrl-C in its first `fit` crashed in Python's teardown (status 139 after the
    "interrupted" line, 4 of 13 tries: XLA's compiler threads still at work); the command now leaves by
    `os._exit(130)` once its output is flushed, and any other status through `sys.exit`."""
    import os

    import kgpt2.cli as cli

    class Left(Exception):
        pass

    def leave(how):
        def record(code):
            raise Left(how, code)
        return record

    monkeypatch.setattr(os, "_exit", leave("os._exit"))  # kgpt2.cli_runner.exit_process
    monkeypatch.setattr(sys, "exit", leave("sys.exit"))
    for status, how in ((130, "os._exit"), (2, "sys.exit"), (0, "sys.exit")):
        monkeypatch.setattr(cli, "main", lambda status=status: status)
        with pytest.raises(Left) as left:
            cli.console()
        assert left.value.args == (how, status)
    import tomllib
    scripts = tomllib.loads((Path(cli.__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kgpt2"] == "kgpt2.cli:console"


@pytest.mark.parametrize("argv, quiet", [(["train", "--config", "c.toml", "-q"], True), (["-q", "train"], True),
                                         (["evaluate", "--run", "r", "--quiet"], True), (["train"], False),
                                         (["serve", "--run", "r", "-q"], True), (["-q", "serve", "--run", "r"], True)])
def test_quiet_is_taken_after_the_verb_too(argv, quiet):
    """`kgpt2 train ... -q` was 'unrecognized arguments: -q' (only `kgpt2 -q train` worked, and serve's own -q)."""
    from kgpt2.cli import parse_args

    assert parse_args(argv).quiet is quiet


def test_an_unknown_option_beside_the_output_folder_is_named(tmp_path, kgpt2_cli):
    """`export --run r --format hf --out o` (the option is --to): the stray "hf" filled OUT, and argparse's
    exclusive group answered "argument out: not allowed with argument --out", hiding the unknown --format."""
    r = kgpt2_cli("export", "--run", "r", "--to", "hf", "--format", "hf", "--out", "o", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().endswith("unrecognized arguments: --format"), r.stderr
