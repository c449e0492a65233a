"""An align run records what it started from in align.json (and in its checkpoints, for a resume).

Before: only the progress line "starting from ckpt-N of run ..." said it, and `-q` hides progress (as it hides
train's start line): an align run looked at later did not tell which checkpoint it started from. The report align
prints at the end (also under -q) names it too; before, it named only the run's own last checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kgpt2.training.checkpoints import CheckpointManager

pytestmark = pytest.mark.backend  # align trains the tiny model


@pytest.fixture
def source(tiny_run, tmp_path) -> Path:
    """A copy of the tiny trained run beside prefs.jsonl."""
    (tmp_path / "prefs.jsonl").write_text("".join(
        json.dumps({"prompt": f"Say {i} \n", "chosen": f" {i} is a number.", "rejected": f" the with {i}"}) + "\n"
        for i in range(16)), encoding="utf-8")
    return Path(shutil.copytree(tiny_run, tmp_path / "runs" / "src"))


def _align(kgpt2_cli, cwd: Path, *extra):
    return kgpt2_cli("align", "run=aligned", "checkpoints_root=runs", 'align.data=["prefs.jsonl"]', "align.steps=2",
                     "align.heldout_fraction=0.25", "train.batch_size=4", *extra, cwd=cwd)


def _start(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "runs" / "aligned" / "align.json").read_text())["start"]


def _checkpoint(tmp_path: Path) -> str:
    return json.loads((tmp_path / "runs" / "aligned" / "align.json").read_text())["checkpoint"]


def test_align_json_names_the_run_and_checkpoint_it_started_from_even_under_q(source, tmp_path, kgpt2_cli):
    newest = CheckpointManager(source).list()[-1]
    r = _align(kgpt2_cli, tmp_path, "-q", "align.init_run=runs/src")
    assert r.returncode == 0, r.stderr
    assert "starting from" not in r.stderr  # progress, hidden by -q as train's start line is
    assert _start(tmp_path) == {"run": "runs/src", "checkpoint": newest.id}
    # and the report -q keeps says it (before, only the hidden progress line did)
    line = next(x for x in r.stdout.splitlines() if x.startswith("run in "))
    want = f"aligned ({_checkpoint(tmp_path)}, align.json), started from {newest.id} of run runs/src"
    assert line.endswith(want), line

    # A resume (here: killed after its last checkpoint, before align.json) knows it from its checkpoint.
    (tmp_path / "runs" / "aligned" / "align.json").unlink()
    again = _align(kgpt2_cli, tmp_path, "align.init_run=runs/src")
    assert again.returncode == 0, again.stderr
    assert "starting from" not in again.stderr and "writing its held-out metrics" in again.stderr
    assert _start(tmp_path) == {"run": "runs/src", "checkpoint": newest.id}
    assert f", started from {newest.id} of run runs/src" in again.stdout, again.stdout


def test_align_json_names_base_and_the_preset_starts(source, tmp_path, kgpt2_cli, tiny_preset):
    r = _align(kgpt2_cli, tmp_path, "align.init_run=runs/src", "align.init_checkpoint=base")
    assert r.returncode == 0, r.stderr
    assert _start(tmp_path) == {"run": "runs/src", "checkpoint": "base"}
    assert ", started from base of run runs/src" in r.stdout, r.stdout

    r = _align(kgpt2_cli, tmp_path, "run=from-preset", f"model.preset={tiny_preset}", "lora.enabled=false",
               "data.sequence_length=32")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "runs" / "from-preset" / "align.json").read_text())
    assert result["start"] == {"preset": str(tiny_preset)}
    assert f", started from preset {tiny_preset}" in r.stdout, r.stdout
