"""An align run resumes with the command that started it after the run it started from is gone.

`align.init_run` gives a new align run its [model], [lora] and data.sequence_length. Before, a resume by the same
command (`kgpt2 align --config dpo`, or the same overrides) after that run was deleted, or from another folder where
the recipe's relative `checkpoints/alpaca` names nothing, got the defaults instead (GPT-2 base): offline, "could not
download the tokenizer of preset 'gpt2_base_en'"; online, a 500 MB download and then a refusal. A resume reads only
the align run's own checkpoint, so its own config.json gives them now. (`--config RUN/config.json` always worked:
tests/test_align_start.py.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend  # align trains the tiny model


def _align(kgpt2_cli, cwd: Path, root: Path):
    return kgpt2_cli("align", "align.init_run=runs/src", "run=aligned", f"checkpoints_root={root}",
                     f'align.data=["{root.parent / "prefs.jsonl"}"]', "align.steps=4", "train.checkpoint_every=2",
                     "align.heldout_fraction=0.25", "train.batch_size=4", cwd=cwd)


def test_the_same_align_command_resumes_without_the_run_it_started_from(tmp_path, tiny_run, kgpt2_cli):
    (tmp_path / "prefs.jsonl").write_text("".join(
        json.dumps({"prompt": f"Say {i} \n", "chosen": f" {i} is a number.", "rejected": f" the with {i}"}) + "\n"
        for i in range(16)), encoding="utf-8")
    source = shutil.copytree(tiny_run, tmp_path / "runs" / "src")
    root = tmp_path / "runs"
    assert _align(kgpt2_cli, tmp_path, root).returncode == 0
    run = root / "aligned"
    shutil.rmtree(run / "ckpt-4")  # as a SIGKILL after ckpt-2 leaves it (the kill itself: tests/test_dpo.py)
    (run / "align.json").unlink()
    shutil.rmtree(source)  # e.g. to free the disk, once aligning has started

    r = _align(kgpt2_cli, tmp_path, root)
    assert r.returncode == 0, r.stderr
    assert "kgpt2: resuming align from ckpt-2 (step 2 of 4)" in r.stderr.splitlines()
    assert json.loads((run / "align.json").read_text())["checkpoint"] == "ckpt-4"

    elsewhere = tmp_path / "elsewhere"  # runs/src names nothing here either: the finished run says so
    elsewhere.mkdir()
    again = _align(kgpt2_cli, elsewhere, root)
    assert again.returncode == 0, again.stderr
    assert "nothing more to do" in again.stderr
