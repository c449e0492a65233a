"""`kgpt2 train --dry-run`: optimizer steps with gradient accumulation, and where a run with checkpoints stands."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.backend_neutral  # what the dry run prints; no model is trained by it


def _plan(kgpt2_cli, *args) -> list[str]:
    r = kgpt2_cli("train", "--dry-run", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_the_dry_run_counts_optimizer_steps_with_gradient_accumulation(tmp_path, tiny_preset, small_shards,
                                                                       tiny_overrides, kgpt2_cli):
    """train.gradient_accumulation_steps=4 on a plan of 1 + 2 + 12 batches said "15 optimizer steps in all";
    Keras steps the optimizer at every 4th batch: 3, none of them in stages 1 and 2."""
    lines = _plan(kgpt2_cli, *tiny_overrides, f"checkpoints_root={tmp_path}", f"model.preset={tiny_preset}",
                  f"data.shards={small_shards}", "run=r", 'train.stages=[1, 2, "rest"]',
                  "train.gradient_accumulation_steps=4")
    assert lines[2].split() == ["stage", "articles", "range", "tokens", "batches", "updates", "epochs"]
    assert [(row.split()[4], row.split()[5]) for row in lines[3:6]] == [("1", "0"), ("2", "0"), ("12", "3")]
    assert lines[6] == ("15 batches in all (train.max_steps counts batches), 3 optimizer steps (updates): one every "
                        "4 batches (train.gradient_accumulation_steps = 4)")
    assert not (tmp_path / "r").exists()


def test_the_dry_run_of_a_run_with_checkpoints_shows_where_it_stands(tmp_path, tiny_preset, small_shards,
                                                                      tiny_overrides, kgpt2_cli):
    """On a run stopped 2 batches into stage 3 the dry run showed the plan from stage 1, as if nothing were
    trained; on a finished 3-stage run given more epochs it approved what `kgpt2 train` refuses."""
    args = [*tiny_overrides, f"checkpoints_root={tmp_path}", f"model.preset={tiny_preset}",
            f"data.shards={small_shards}", "run=r", 'train.stages=[1, 2, "rest"]']
    r = kgpt2_cli("-q", "train", *args, "train.max_steps=5")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "r"
    lines = _plan(kgpt2_cli, "--run", run, "train.max_steps=0")
    assert lines[2].split()[-1] == "trained"
    assert [row.split()[-1] for row in lines[3:6]] == ["all", "all", "2"]
    assert lines[6] == "15 optimizer steps in all"
    assert lines[7] == (f"run {run} is at step 5 (ckpt-5, stopped at train.max_steps in stage 3): `kgpt2 train` "
                        "resumes in stage 3, after 2 of its 12 batches and trains 10 more steps")
    assert _plan(kgpt2_cli, "--run", run)[-1] == (f"run {run} is at step 5 (ckpt-5, stopped at train.max_steps in "
                                                  "stage 3), the end of this plan: `kgpt2 train` would train nothing")
    r = kgpt2_cli("-q", "train", "--run", run, "train.max_steps=0")
    assert r.returncode == 0, r.stderr
    lines = _plan(kgpt2_cli, "--run", run, 'train.stages=["rest"]')  # a new stage after the three
    assert [lines[3].split()[0], lines[3].split()[-1]] == ["4", "0"]
    assert lines[-1] == f"run {run} is at step 15 (ckpt-15): `kgpt2 train` resumes at the start of stage 4 and trains 15 more steps"
    refused = kgpt2_cli("train", "--dry-run", "--run", run, "train.epochs=2")
    assert refused.returncode == 2 and "has finished its 3 stages" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
