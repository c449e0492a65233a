"""A stage that `train.max_steps` stops before its end: its checkpoint says so and is no stage end, no
`stage-N.weights.h5` holds part of the stage, `stage-N` names no checkpoint until the stage ends, and a higher
`train.max_steps` trains the stage on to its real end (one row per stage in stages.json).
"""

from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.backend_neutral  # the trainer's bookkeeping; the training under it is tested elsewhere


def _rows(run) -> list[tuple]:
    return [(r["stage"], r["batches"], r["of_batches"]) for r in json.loads((run / "stages.json").read_text())]


def test_a_max_steps_stop_in_stage_3_is_no_stage_end_and_a_higher_one_ends_the_stage(
        tmp_path, tiny_preset, small_shards, tiny_overrides, kgpt2_cli):
    """`train.max_steps=5` on a plan [1, 2, "rest"] (1 + 2 + 12 batches) stopped 2 batches into stage 3 and saved
    that as the end of stage 3: stage-3.weights.h5 held 2 of its 12 batches, export called it "end of stage 3",
    `--checkpoint stage-3` resolved to it, and `train.max_steps=0` then refused ("has finished its 3 stages")."""
    from kgpt2.run import Run
    from kgpt2.serving.checkpoint_names import resolve
    from kgpt2.training.checkpoints import CheckpointManager

    run = tmp_path / "r"
    r = kgpt2_cli("train", *tiny_overrides, f"checkpoints_root={tmp_path}", f"model.preset={tiny_preset}",
                  f"data.shards={small_shards}", "run=r", 'train.stages=[1, 2, "rest"]', "train.max_steps=5")
    assert r.returncode == 0, r.stderr
    stop = CheckpointManager(run).latest()
    assert stop.step == 5 and not stop.state["stage_end"] and stop.state["stopped"] == "max_steps"
    assert (stop.state["stage"], stop.state["epoch"], stop.state["batch"]) == (2, 0, 2)  # still in stage 3
    (first, second, (stage, batches, of_batches)) = _rows(run)
    assert (stage, batches) == (3, 2) and of_batches > batches  # stages.json: the part trained, said as a part
    assert not (run / "stage-3.weights.h5").exists() and (run / "stage-2.weights.h5").is_file()
    said = f"in stage 3, stopped at train.max_steps after 2 of {of_batches} batches"
    assert resolve(run) == (stop.id, f"{stop.id}: latest, {said}, step 5")
    assert f"stopped at train.max_steps in stage 3, after 2 of {of_batches} batches" in r.stdout, r.stdout

    refused = kgpt2_cli("export", "--run", run, "--checkpoint", "stage-3", "--to", "preset", tmp_path / "out")
    assert refused.returncode == 2 and not (tmp_path / "out").exists(), refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"kgpt2: error: run '{run}' has not finished stage 3: train.max_steps stopped it at {stop.id} (step 5); "
        f"ask for {stop.id}, or train the stage on with a higher train.max_steps")

    again = kgpt2_cli("train", "--run", run)  # the same max_steps: nothing to train, and what would
    assert again.returncode == 0 and CheckpointManager(run).latest().step == 5, again.stderr
    assert again.stdout.startswith("trained nothing: the run stopped at train.max_steps (step 5) in stage 3, "
                                   f"after 2 of {of_batches} batches;"), again.stdout
    assert "give a higher train.max_steps (or 0: the whole plan)" in again.stdout

    on = kgpt2_cli("train", "--run", run, "train.max_steps=0")  # the stage trains on from batch 3 to its end
    assert on.returncode == 0, on.stderr
    end = CheckpointManager(run).latest()
    assert end.step == 3 + of_batches and end.state["stage_end"] and end.state["stage"] == 3
    assert f"trained {of_batches - 2} steps (step 5 -> {end.step})" in on.stdout, on.stdout
    assert _rows(run) == [first, second, (3, of_batches, of_batches)]  # the part's row replaced by the stage's
    assert [r["stage"] for r in end.state["stage_metrics"]] == [1, 2, 3]
    assert Run(run).checkpoint("stage-3").id == end.id
    assert os.path.samefile(run / "stage-3.weights.h5", end.path / "stage-3.weights.h5")
    assert resolve(run, "stage-3")[1] == f"{end.id}: stage-3, end of stage 3, step {end.step}"


def test_a_stage_trained_on_after_its_end_puts_its_newest_export_in_the_run_folder(
        tmp_path, tiny_preset, small_shards, tiny_overrides, kgpt2_cli):
    """A one-stage run given more train.epochs ends its stage again: the run folder's stage-1.weights.h5 stayed
    the first end's weights (the export was published only where missing)."""
    from kgpt2.training.checkpoints import CheckpointManager

    run = tmp_path / "one"
    r = kgpt2_cli("-q", "train", *tiny_overrides, f"checkpoints_root={tmp_path}", f"model.preset={tiny_preset}",
                  f"data.shards={small_shards}", "run=one", "train.stages=[2]")
    assert r.returncode == 0, r.stderr
    first = CheckpointManager(run).latest()
    r = kgpt2_cli("-q", "train", "--run", run, "train.epochs=2")
    assert r.returncode == 0, r.stderr
    second = CheckpointManager(run).latest()
    assert second.step == 2 * first.step and second.state["stage_end"] and first.path.is_dir()
    assert os.path.samefile(run / "stage-1.weights.h5", second.path / "stage-1.weights.h5")
