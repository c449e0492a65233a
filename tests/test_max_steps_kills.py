"""A run that `train.max_steps` stops, killed (SIGKILL) while it saves that stop: the last good checkpoint stays
as it was, and starting again (the run moved to another folder, from another working directory) continues at the
exact next batch, to the weights of a run never killed. A kill
after the stop's checkpoint but before the stage table left stages.json behind it, and the next `kgpt2 train`
("trained nothing") never wrote it: now it is written again from the checkpoint.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from test_faults import cli, tree_hashes

from kgpt2.training.checkpoints import CheckpointManager

pytestmark = [pytest.mark.backend, pytest.mark.slow]  # two trainers SIGKILLed in subprocesses

# 1 + 2 + 12 batches; a fixed cosine (decay_steps) so that stopping at max_steps does not change the curve
PLAN = ['train.stages=[1, 2, "rest"]', "train.decay_steps=15"]


def _arrays(ckpt) -> dict:
    out = {}
    for name in ("weights.npz", "optimizer.npz"):
        with np.load(ckpt.path / name) as f:
            out.update({f"{name}:{k}": f[k] for k in f.files})
    return out


def test_a_kill_while_saving_a_max_steps_stop_loses_nothing(tmp_path, tiny_preset, small_shards, tiny_overrides,
                                                            kgpt2_cli):
    args = ["train", *tiny_overrides, f"checkpoints_root={tmp_path}", f"model.preset={tiny_preset}",
            f"data.shards={small_shards}", *PLAN]
    r = kgpt2_cli("-q", *args, "run=ref", "train.max_steps=12")  # the reference: never stopped, never killed
    assert r.returncode == 0, r.stderr
    r = kgpt2_cli("-q", *args, "run=r", "train.max_steps=5")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "r"
    before = tree_hashes(run / "ckpt-5")

    killed = cli("train", "--run", run, "train.max_steps=12", env={"KGPT2_FAULT_POINT": "mid-checkpoint"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = CheckpointManager(run)
    assert [c.step for c in store.list()] == [1, 3, 5] and list(run.glob(".ckpt-12.tmp-*"))
    assert tree_hashes(run / "ckpt-5") == before and store.damage(store.latest()) is None

    # started again on the run moved elsewhere (its leftover temp folder with it), from another working directory
    run = Path(shutil.move(run, tmp_path / "elsewhere" / "r"))
    (work := tmp_path / "work").mkdir()
    r = kgpt2_cli("-q", "train", "--run", run, cwd=work)  # config.json says max_steps 12 now: on from ckpt-5
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("trained 7 steps (step 5 -> 12)"), r.stdout
    stop, ref = CheckpointManager(run).latest(), CheckpointManager(tmp_path / "ref").latest()
    assert (stop.step, stop.state["stopped"], stop.state["batch"]) == (12, "max_steps", 9)
    mine, theirs = _arrays(stop), _arrays(ref)
    assert sorted(mine) == sorted(theirs)
    for k in mine:
        np.testing.assert_array_equal(mine[k], theirs[k], err_msg=k)
    assert not list(run.glob(".ckpt-*"))

    # killed after the step-14 stop is saved (removing ckpt-5 for keep_last=1), before stages.json is written
    killed = cli("train", "--run", run, "train.max_steps=14", "train.keep_last=1",
                 env={"KGPT2_FAULT_POINT": "mid-cleanup"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert CheckpointManager(run).latest().step == 14
    assert json.loads((run / "stages.json").read_text())[-1]["batches"] == 9  # the step-12 stop's row
    r = kgpt2_cli("-q", "train", "--run", run)
    assert r.returncode == 0 and r.stdout.startswith("trained nothing: the run stopped at train.max_steps (step 14)")
    rows = json.loads((run / "stages.json").read_text())
    assert rows == CheckpointManager(run).latest().state["stage_metrics"] and rows[-1]["batches"] == 11
    assert not list(run.glob(".trash-*"))
