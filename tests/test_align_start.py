"""Which checkpoint `kgpt2 align` starts from (align.init_run), said in one line, and how its start and resume hold up.

Before: align verified the whole start checkpoint, so a damaged optimizer.npz in the run's newest checkpoint (state
align never reads) sent it to an older one, or stopped it when named; a damaged named checkpoint, or preference
data refused after the preset was copied in, left a run folder behind; and an align run resumed from its own
config.json (moved, or where align.init_run resolves to another spelling of the same path) was refused with
"init_run: 'runs/src' -> '/abs/runs/src'".
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kgpt2.training.checkpoints import CheckpointManager

pytestmark = pytest.mark.backend  # align trains the tiny model


def _prefs(path: Path, n: int = 16) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Say {i} \n", "chosen": f" {i} is a number.",
                                        "rejected": f" the with {i}"}) + "\n" for i in range(n)), encoding="utf-8")
    return path


@pytest.fixture
def source(tiny_run, tmp_path) -> Path:
    """A copy of the tiny trained run (its checkpoints are damaged here), beside prefs.jsonl."""
    _prefs(tmp_path / "prefs.jsonl")
    return Path(shutil.copytree(tiny_run, tmp_path / "runs" / "src"))


def _align(kgpt2_cli, cwd: Path, *extra):
    return kgpt2_cli("align", "align.init_run=runs/src", "run=aligned", "checkpoints_root=runs",
                     'align.data=["prefs.jsonl"]', "align.steps=2", "align.heldout_fraction=0.25",
                     "train.batch_size=4", *extra, cwd=cwd)


def _lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "damaged" in line or "starting from" in line]


def test_a_damaged_optimizer_state_in_the_start_run_does_not_change_where_align_starts(source, tmp_path, kgpt2_cli,
                                                                                          flip_bytes):
    newest = CheckpointManager(source).list()[-1]
    flip_bytes(newest.path / "optimizer.npz")
    r = _align(kgpt2_cli, tmp_path)
    assert r.returncode == 0, r.stderr
    assert _lines(r.stderr) == [f"kgpt2: starting from {newest.id} of run runs/src"]

    named = _align(kgpt2_cli, tmp_path, f"align.init_checkpoint={newest.id}", "run=named")
    assert named.returncode == 0, named.stderr  # it was: "is damaged ...; choose another checkpoint"
    assert _lines(named.stderr) == [f"kgpt2: starting from {newest.id} of run runs/src"]


def test_align_init_checkpoint_base_starts_from_the_model_as_built(source, tmp_path, kgpt2_cli):
    """The refusal of an unknown align.init_checkpoint lists `base`, which was itself refused ("no checkpoint")."""
    r = _align(kgpt2_cli, tmp_path, "align.init_checkpoint=base")
    assert r.returncode == 0, r.stderr
    assert _lines(r.stderr) == ["kgpt2: starting from base of run runs/src"]


def test_damaged_weights_are_passed_over_saying_which_or_refused_when_named(source, tmp_path, kgpt2_cli, flip_bytes):
    newest, older = CheckpointManager(source).list()[-2:][::-1]
    flip_bytes(newest.path / "weights.npz")
    named = _align(kgpt2_cli, tmp_path, f"align.init_checkpoint={newest.id}")
    assert named.returncode == 2 and "Traceback" not in named.stderr
    assert named.stderr.strip().splitlines()[-1] == (
        f"kgpt2: error: checkpoint 'runs/src/{newest.id}' is damaged (weights.npz does not match its checksum); "
        "choose another align.init_checkpoint")
    assert not (tmp_path / "runs" / "aligned").exists()  # it held config.json and the copied preset

    r = _align(kgpt2_cli, tmp_path)
    assert r.returncode == 0, r.stderr
    assert _lines(r.stderr) == [
        f"kgpt2: checkpoint 'runs/src/{newest.id}' is damaged (weights.npz does not match its checksum); using "
        f"{older.id} instead and leaving it as it is", f"kgpt2: starting from {older.id} of run runs/src"]


def test_data_refused_after_reading_leaves_no_run_folder(source, tmp_path, kgpt2_cli):
    """The held-out split is checked once the pairs are encoded: that was after the preset was copied in."""
    r = _align(kgpt2_cli, tmp_path, "align.heldout_fraction=0.001")
    assert r.returncode == 2 and "falls in the held-out share" in r.stderr.strip().splitlines()[-1], r.stderr
    assert not (tmp_path / "runs" / "aligned").exists()


def _kill_after_first_checkpoint(run: Path) -> None:
    """The run as a SIGKILL after ckpt-2 leaves it (the kill itself is tested in test_dpo)."""
    shutil.rmtree(run / "ckpt-4")
    (run / "align.json").unlink()


def test_an_align_run_resumes_from_its_config_json_moved_and_without_the_run_it_started_from(source, tmp_path,
                                                                                            kgpt2_cli):
    first = _align(kgpt2_cli, tmp_path, "align.steps=4", "train.checkpoint_every=2")
    assert first.returncode == 0, first.stderr
    run = tmp_path / "runs" / "aligned"
    _kill_after_first_checkpoint(run)
    here = kgpt2_cli("align", "--config", run / "config.json", cwd=tmp_path)  # init_run: its path resolved
    assert here.returncode == 0, here.stderr
    assert "kgpt2: resuming align from ckpt-2 (step 2 of 4)" in here.stderr.splitlines()

    _kill_after_first_checkpoint(run)
    moved = tmp_path / "drive" / "aligned"
    shutil.move(run, moved)
    shutil.rmtree(source)
    r = kgpt2_cli("align", "--config", moved / "config.json", cwd=tmp_path / "drive")
    assert r.returncode == 0, r.stderr
    assert "kgpt2: resuming align from ckpt-2 (step 2 of 4)" in r.stderr.splitlines()
    assert json.loads((moved / "align.json").read_text())["checkpoint"] == "ckpt-4"
