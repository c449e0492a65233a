"""What `kgpt2 train` says, and what it leaves, when it is stopped, when it fails, and when it finishes.

SIGTERM (`timeout`, `kill`, a notebook stopping a cell's command) ends a verb as Ctrl-C does: one line, the
status a shell expects. A continuation that fails before its model is built leaves the run's config.json as
it was. The lines a training prints count in words ("1 batch"), give one parameter count, short measured
values, and end with the next commands to run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.backend_neutral  # messages and exit statuses; the training under them is tested elsewhere

def _terminal_signals():
    """SIGTERM at its default, as a shell starts a command (a parent that ignores it passes that on)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_sigterm_stops_train_with_one_line_and_the_run_resumes(tmp_path, tiny_preset, small_shards, tiny_overrides,
                                                               kgpt2_cli):
    """`timeout 60 kgpt2 train ...` ended with no word at all (Python's default for SIGTERM)."""
    from kgpt2.cli import CHECKPOINT_KEPT
    from kgpt2.training.checkpoints import CheckpointManager

    args = [*tiny_overrides, f"checkpoints_root={tmp_path}", f"model.preset={tiny_preset}",
            f"data.shards={small_shards}", "run=stopped", "train.stages=[1, 1]"]
    run = tmp_path / "stopped"
    # Held after its first stage-end checkpoint (kgpt2.training.checkpoints.fault_point), where a stop is certain to
    # come between two steps of Python, not before the process has its handlers.
    env = dict(os.environ, PYTHONUNBUFFERED="1", KGPT2_FAULT_PAUSE="after-checkpoint")
    proc = subprocess.Popen([sys.executable, "-m", "kgpt2.cli", "-q", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_terminal_signals)
    deadline = time.monotonic() + 300
    while not list(run.glob("ckpt-*")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the training never wrote its first checkpoint"
        time.sleep(0.1)
    time.sleep(1.0)  # into the pause
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == f"kgpt2: stopped (SIGTERM); {CHECKPOINT_KEPT}", err
    assert "Traceback" not in err and out == "", (out, err)
    (kept,) = CheckpointManager(run).list()
    # "run the same command to resume": the lock was let go and the checkpoint resumes
    r = kgpt2_cli("-q", "train", *args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"trained 1 step (step {kept.step} -> {kept.step + 1})"), r.stdout


def test_sigterm_in_any_verb_is_a_stop_and_the_handler_is_put_back(capfd, monkeypatch):
    from argparse import Namespace

    from kgpt2.cli_runner import exit_process, run_verb

    def handler(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the signal ends this first
        raise AssertionError("SIGTERM did not stop the verb")

    before = signal.getsignal(signal.SIGTERM)
    assert run_verb(Namespace(handler=handler, verb="evaluate", interrupted="")) == 143
    assert capfd.readouterr().err == "kgpt2: stopped (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) == before
    # ... and the process leaves at once, as after Ctrl-C (tests/test_skeleton.py says why)
    class Left(Exception):
        pass

    def leave(code):
        raise Left(code)

    monkeypatch.setattr(os, "_exit", leave)
    monkeypatch.setattr(logging, "shutdown", lambda: None)  # it would close pytest's own log capture
    with pytest.raises(Left) as left:
        exit_process(143)
    assert left.value.args == (143,)


def test_a_continuation_that_fails_at_its_model_leaves_config_json_as_it_was(tmp_path, tiny_preset, small_shards,
                                                                             tiny_overrides, kgpt2_cli):
    """`kgpt2 train --run R key=value` whose value is found wrong only when the model is built (an adapter folder
    that is none) still wrote the change into R's config.json, as if R had been trained with it."""
    args = [*tiny_overrides, f"checkpoints_root={tmp_path}", f"model.preset={tiny_preset}",
            f"data.shards={small_shards}", "run=lora", "train.stages=[1]", "lora.enabled=true"]
    assert kgpt2_cli("-q", "train", *args).returncode == 0
    run = tmp_path / "lora"
    before = (run / "config.json").read_bytes()
    r = kgpt2_cli("train", "--run", run, "train.epochs=2", f"lora.init_from={tmp_path / 'no-adapter'}")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("kgpt2: error: "), r.stderr
    assert "is not a PEFT adapter directory" in r.stderr and "Traceback" not in r.stderr
    assert (run / "config.json").read_bytes() == before
    assert "continuing run" not in r.stderr  # said only of a continuation that starts
    r = kgpt2_cli("train", "--run", run, "train.epochs=2")  # the same change alone trains, and is recorded
    assert r.returncode == 0, r.stderr
    (record,) = json.loads((run / "config.json").read_text())["continuations"]
    assert record["changed"] == {"train.epochs": [1, 2]}


def test_a_training_counts_in_words_gives_one_parameter_count_and_says_what_next(tmp_path, tiny_preset, small_shards,
                                                                                tiny_overrides, kgpt2_cli):
    """It said "2 epochs of 1 batches"; "model: ..., N parameters" with N counting a padded vocabulary's rows (the
    preset's own count is another: two counts for one model); and nothing of what to run next."""
    import keras_hub

    run = tmp_path / "my runs" / "one"
    r = kgpt2_cli("train", *tiny_overrides, f"checkpoints_root={run.parent}", f"model.preset={tiny_preset}",
                  f"data.shards={small_shards}", "run=one", "train.stages=[1]", "train.epochs=2",
                  "model.pad_vocabulary_to=100")  # 512 tokens -> 600 rows
    assert r.returncode == 0, r.stderr
    assert "kgpt2: stage-1: 2 epochs of 1 batch\n" in r.stderr, r.stderr
    (model,) = [line for line in r.stderr.splitlines() if line.startswith("kgpt2: model:")]
    preset_count = keras_hub.models.GPT2Backbone.from_preset(str(tiny_preset)).count_params()
    hidden = 32
    assert f", {preset_count:,} parameters, {preset_count:,} trainable;" in model, model
    assert f"padded 512 -> 600 for speed adds {88 * hidden:,} that stay zero" in model, model
    # the stage's validation in 4 significant digits (stages.json keeps them all)
    (stage,) = json.loads((run / "stages.json").read_text())
    (done,) = [line for line in r.stderr.splitlines() if line.startswith("kgpt2: stage-1 done:")]
    assert done.startswith(f"kgpt2: stage-1 done: loss {stage['loss']:.4g}, accuracy {stage['accuracy']:.4g}, "), done
    assert not re.search(r"\d\.\d{5}", done), done
    # ... and the next commands, with the run's path as one shell word
    lines = r.stdout.strip().splitlines()  # after Keras' own line per fit
    assert lines[-3] == f"trained 2 steps; run in {run} (latest ckpt-2)", lines
    commands = [shlex.split(line.removeprefix("next:")) for line in lines[-2:]]
    assert commands == [["kgpt2", "evaluate", "--run", str(run)], ["kgpt2", "demo", "--run", str(run)]], lines


def test_a_fit_of_one_step_says_step_not_steps_n_to_n(tmp_path, tiny_preset, small_shards, tiny_overrides, kgpt2_cli):
    """Each fit says where it sits in the plan, because Keras' bar restarts at every checkpoint; a fit of one
    step said "steps 1..1"."""
    r = kgpt2_cli("train", *tiny_overrides, f"checkpoints_root={tmp_path}", f"model.preset={tiny_preset}",
                  f"data.shards={small_shards}", "run=short", "train.stages=[1, 1]")
    assert r.returncode == 0, r.stderr
    fits = [line for line in r.stderr.splitlines() if ", epoch 1/1: " in line]
    assert fits == ["kgpt2: stage-1/2, epoch 1/1: step 1 of 2", "kgpt2: stage-2/2, epoch 1/1: step 2 of 2"], r.stderr
