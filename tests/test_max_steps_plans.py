"""`train.max_steps` on runs that go on: `--dry-run` says what `kgpt2 train` then does (a plan placed after
finished stages counts their steps in max_steps, as the trainer does), and with `train.epochs = 0` a stage that
max_steps cuts before the plan's last stage is a max_steps stop, not a stage end (later stages were skipped).
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.backend_neutral  # the trainer's bookkeeping and the dry run's words


def _last_line(kgpt2_cli, *args) -> str:
    r = kgpt2_cli("train", "--dry-run", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()[-1]


def _args(tmp_path, tiny_preset, small_shards, tiny_overrides, *more) -> list[str]:
    return [*tiny_overrides, f"checkpoints_root={tmp_path}", f"model.preset={tiny_preset}",
            f"data.shards={small_shards}", "run=r", *more]


def test_the_dry_run_of_a_plan_after_finished_stages_counts_their_steps_in_max_steps(
        tmp_path, tiny_preset, small_shards, tiny_overrides, kgpt2_cli):
    """A run that finished [1, 2] (3 steps), given 'train.stages=["rest"]' train.max_steps=6: the dry run said
    "trains 6 more steps" (max_steps applied to the new plan alone); the trainer counts the 3 done and trains 3."""
    from kgpt2.training.checkpoints import CheckpointManager

    r = kgpt2_cli("-q", "train", *_args(tmp_path, tiny_preset, small_shards, tiny_overrides, "train.stages=[1, 2]"))
    assert r.returncode == 0, r.stderr
    run = tmp_path / "r"
    more = ['train.stages=["rest"]', "train.max_steps=6"]
    assert _last_line(kgpt2_cli, "--run", run, *more) == (
        f"run {run} is at step 3 (ckpt-3): `kgpt2 train` resumes at the start of stage 3 and trains 3 more steps")
    r = kgpt2_cli("-q", "train", "--run", run, *more)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("trained 3 steps (step 3 -> 6)"), r.stdout
    assert CheckpointManager(run).latest().step == 6


def test_epochs_0_a_max_steps_cut_before_the_last_stage_is_a_stop_and_the_dry_run_follows_the_trainer(
        tmp_path, tiny_preset, small_shards, tiny_overrides, kgpt2_cli):
    """train.epochs=0 train.max_steps=8 on [1, 12, "rest"] (1 + 10 + 5 batches an epoch) cut stage 2 after 7 of
    its 10 batches and called that its end: stage-2.weights.h5 held part of it, stage 3 never trained, and the
    next `kgpt2 train` built the model to say "the end of its plan". Now it is a max_steps stop in stage 2; a
    higher max_steps gives the stages left 2 epochs each (stage 1 keeps its one), and the dry run says the
    steps the trainer then trains (it said max_steps minus the step, more than the stages left hold)."""
    from kgpt2.training.checkpoints import CheckpointManager

    args = _args(tmp_path, tiny_preset, small_shards, tiny_overrides, 'train.stages=[1, 12, "rest"]',
                 "train.epochs=0", "train.max_steps=8")
    r = kgpt2_cli("-q", "train", *args)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "r"
    stop = CheckpointManager(run).latest()
    assert (stop.step, stop.state["stage_end"], stop.state["stopped"]) == (8, False, "max_steps")
    assert (stop.state["stage"], stop.state["epoch"], stop.state["batch"]) == (1, 0, 7)
    assert not (run / "stage-2.weights.h5").exists() and (run / "stage-1.weights.h5").is_file()
    assert "stopped at train.max_steps in stage 2, after 7 of 10 batches" in r.stdout, r.stdout
    again = kgpt2_cli("-q", "train", "--run", run)
    assert again.returncode == 0 and again.stdout.startswith("trained nothing: the run stopped at train.max_steps"), \
        again.stdout

    assert _last_line(kgpt2_cli, "--run", run, "train.max_steps=32") == (
        f"run {run} is at step 8 (ckpt-8, stopped at train.max_steps in stage 2): `kgpt2 train` resumes in stage 2, "
        "after 7 of its 20 batches and trains 23 more steps")
    r = kgpt2_cli("-q", "train", "--run", run, "train.max_steps=32")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("trained 23 steps (step 8 -> 31)"), r.stdout
    rows = json.loads((run / "stages.json").read_text())
    assert [(row["stage"], row["batches"], row["of_batches"]) for row in rows] == [(1, 1, 1), (2, 20, 20), (3, 10, 10)]
