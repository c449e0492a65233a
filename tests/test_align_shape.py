"""`kgpt2 align` on a preset records the preset's shape in the run's config.json, as `kgpt2 train` does.

Before: an align run on a preset recorded model.*'s defaults (12 layers, 1,024 positions, 768 wide) for a model
of another shape, and took a shape key of its own (model.num_layers=4) without a word though keras-hub builds the
preset as saved.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_neutral  # what align records and refuses; its training is tested in test_dpo


def _prefs(path: Path, n: int = 16) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Say {i} \n", "chosen": f" {i} is a number.",
                                        "rejected": f" the with {i}"}) + "\n" for i in range(n)), encoding="utf-8")
    return path


def _args(tmp_path, preset, *extra) -> list[str]:
    return [f"model.preset={preset}", f"checkpoints_root={tmp_path / 'runs'}", "run=aligned",
            f'align.data=["{_prefs(tmp_path / "prefs.jsonl")}"]', "align.steps=2", "align.heldout_fraction=0.25",
            "data.sequence_length=32", "train.batch_size=4", "train.precision=float32", "train.device=cpu",
            "lora.enabled=false", *extra]


@pytest.fixture
def preset(tiny_preset, tmp_path) -> Path:
    """A copy of the tiny 2-layer, 32-wide, 64-position preset (the run copies it in: the original stays shared)."""
    return Path(shutil.copytree(tiny_preset, tmp_path / "tiny-preset"))


def test_an_align_run_records_its_presets_shape(tmp_path, preset, pydoc_tokenizer, kgpt2_cli):
    r = kgpt2_cli("align", *_args(tmp_path, preset), "--quiet")
    assert r.returncode == 0, r.stderr
    model = json.loads((tmp_path / "runs" / "aligned" / "config.json").read_text())["model"]
    shape = {k: model[k] for k in ("num_layers", "num_heads", "hidden_dim", "intermediate_dim", "max_sequence_length",
                                   "vocabulary_size")}
    assert shape == {"num_layers": 2, "num_heads": 2, "hidden_dim": 32, "intermediate_dim": 64,
                     "max_sequence_length": 64, "vocabulary_size": pydoc_tokenizer.vocab_size}, model


def test_a_shape_key_against_the_preset_is_refused_before_the_run_is_made(tmp_path, preset, kgpt2_cli):
    r = kgpt2_cli("align", *_args(tmp_path, preset, "model.num_layers=4"))
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.strip().splitlines() == [
        f"kgpt2: error: model.num_layers = 4 applies only to model.preset = \"scratch\"; preset '{preset}' has 2 "
        "layers: leave it out (the model is the preset's), or set model.preset = \"scratch\" for a new model of that "
        "shape"]
    assert not (tmp_path / "runs" / "aligned").exists()
