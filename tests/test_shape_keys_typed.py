"""A model shape key the user typed (a TOML file, key=value) with a preset: refused unless it is the preset's own
value, even when it is the key's default; a run's own config.json (which records the preset's shape in every shape
key) is never taken for typed keys, so a preset run resumes, continues and dry-runs.
"""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.backend_neutral  # the config's checks; the training under them is tested elsewhere


def _no_shape(overrides: list[str]) -> list[str]:
    """The tiny model's overrides without its model.* shape keys."""
    return [o for o in overrides if not o.startswith("model.")]


def _refusal(preset, key: str, value, has: str) -> str:
    return (f"kgpt2: error: model.{key} = {value} applies only to model.preset = \"scratch\"; preset '{preset}' has "
            f"{has}: leave it out (the model is the preset's), or set model.preset = \"scratch\" for a new model of "
            "that shape")


@pytest.fixture
def preset(tmp_path, tiny_preset):
    """A copy of the 2-layer, 2-head, 32-wide tiny preset (a run copies a local preset in)."""
    return shutil.copytree(tiny_preset, tmp_path / "tiny-preset")


def test_a_typed_default_shape_key_is_refused_on_a_preset(tmp_path, preset, small_shards, tiny_overrides, kgpt2_cli):
    """model.num_layers=12 (the default) on a 2-layer preset was silently ignored, by train and --dry-run alike, as
    was num_heads = 12 in a TOML file: only values other than the default were refused."""
    args = [*_no_shape(tiny_overrides), f"checkpoints_root={tmp_path}", f"model.preset={preset}",
            f"data.shards={small_shards}", "run=typed", "train.stages=[1]", "train.max_steps=1"]
    for dry_run in ([], ["--dry-run"]):
        r = kgpt2_cli("train", *dry_run, *args, "model.num_layers=12")
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert r.stderr.strip().splitlines()[-1] == _refusal(preset, "num_layers", 12, "2 layers"), r.stderr
        assert "Traceback" not in r.stderr
    toml = tmp_path / "run.toml"
    toml.write_text(f'[model]\npreset = "{preset}"\nnum_heads = 12\n', encoding="utf-8")
    r = kgpt2_cli("train", "--dry-run", "--config", toml, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines()[-1] == _refusal(preset, "num_heads", 12, "2 heads"), r.stderr
    assert not (tmp_path / "typed").exists()
    # the preset's own values, typed, are no mistake; nor is vocabulary_size = 0 (the tokenizer's size)
    toml.write_text(f'[model]\npreset = "{preset}"\nnum_heads = 2\nvocabulary_size = 0\n', encoding="utf-8")
    r = kgpt2_cli("train", "--dry-run", "--config", toml, *args, "model.num_layers=2", "model.hidden_dim=32")
    assert r.returncode == 0, r.stderr


def test_a_preset_run_resumes_with_its_recorded_shape(tmp_path, preset, small_shards, tiny_overrides, kgpt2_cli):
    """config.json records the preset's shape in every shape key: resuming, continuing or dry-running the run reads
    them back without taking them for the user's; a shape key typed then is checked as for a new run."""
    r = kgpt2_cli("-q", "train", *_no_shape(tiny_overrides), f"checkpoints_root={tmp_path}",
                  f"model.preset={preset}", f"data.shards={small_shards}", "run=r", "train.stages=[1, 2]",
                  "train.max_steps=1")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "r"
    model = json.loads((run / "config.json").read_text())["model"]
    assert (model["num_layers"], model["hidden_dim"], model["vocabulary_size"]) == (2, 32, 512), model
    r = kgpt2_cli("train", "--dry-run", "--run", run)
    assert r.returncode == 0, r.stderr
    r = kgpt2_cli("train", "--run", run, "model.num_layers=12")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines()[-1] == _refusal(run / "preset", "num_layers", 12, "2 layers"), r.stderr
    r = kgpt2_cli("train", "--dry-run", "--run", run, "model.num_layers=2")
    assert r.returncode == 0, r.stderr
    r = kgpt2_cli("-q", "train", "--run", run, "train.max_steps=3")  # the resume itself
    assert r.returncode == 0, r.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["num_layers"] == 2 and "typed_keys" not in config
    # a new run from the run's settings: its config.json's keys are not typed either
    r = kgpt2_cli("train", "--dry-run", "--config", run / "config.json", "run=another")
    assert r.returncode == 0, r.stderr


def test_typed_keys_are_what_the_user_gave(tmp_path):
    """typed_keys: the TOML file's keys and the overrides', never a run's config.json's or align.init_run's."""
    from kgpt2.config import load_config, save_config

    toml = tmp_path / "a.toml"
    toml.write_text('seed = 1\n[model]\nnum_layers = 12\n[train]\nstages = [1]\n', encoding="utf-8")
    assert load_config(toml, ["lora={rank=4}"]).typed_keys == {"seed", "model.num_layers", "train.stages",
                                                                 "lora.rank"}
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    save_config(load_config(None, ["model.num_layers=3", f"checkpoints_root={run.parent}", "run=r"]),
                run / "config.json")
    assert load_config(run / "config.json", ["train.epochs=2"]).typed_keys == {"train.epochs"}
    cfg = load_config(None, [f'align.init_run="{run}"'])
    assert cfg.model.num_layers == 3 and cfg.typed_keys == {"align.init_run"}
    assert "typed_keys" not in cfg.to_dict()
