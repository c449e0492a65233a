"""What `kgpt2 train` records and says about what it trained: the model's shape in config.json (never one it does
not have), a stage that train.max_steps stopped, the run's path after a resume, and which `kgpt2 prepare` makes
shards the model can train on.
"""

from __future__ import annotations

import json
import shlex

import pandas as pd
import pytest

pytestmark = pytest.mark.backend_neutral  # what train records and says; the training under it is tested elsewhere



def _no_shape(overrides: list[str]) -> list[str]:
    """The tiny model's overrides without its model.* shape keys (a config that sets none of them)."""
    return [o for o in overrides if not o.startswith("model.")]


def test_a_shape_key_with_a_preset_is_refused_not_ignored(tmp_path, tiny_preset, small_shards, tiny_overrides,
                                                          kgpt2_cli):
    """model.num_layers=6 model.hidden_dim=256 on a 2-layer, 32-wide preset trained the preset's model with no
    word, and config.json said 6 layers, 256 wide; --dry-run said nothing either."""
    args = [*tiny_overrides, f"checkpoints_root={tmp_path}", f"model.preset={tiny_preset}",
            f"data.shards={small_shards}", "run=shape", "train.stages=[1]", "train.max_steps=1",
            "model.num_layers=6", "model.hidden_dim=256"]
    expected = (f"kgpt2: error: model.num_layers = 6 and model.hidden_dim = 256 apply only to model.preset = "
                f"\"scratch\"; preset '{tiny_preset}' has 2 layers and hidden_dim 32: leave them out (the model is "
                "the preset's), or set model.preset = \"scratch\" for a new model of that shape")
    for dry_run in ([], ["--dry-run"]):
        r = kgpt2_cli("train", *dry_run, *args)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert r.stderr.strip().splitlines()[-1] == expected, r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "shape").exists()
    # the preset's own values are no mistake (tiny_overrides restate them): only one that differs
    r = kgpt2_cli("train", *args[:-2], "model.vocabulary_size=600")
    assert r.returncode == 2 and "model.vocabulary_size = 600 applies only to" in r.stderr, r.stderr
    assert "has 512 tokens:" in r.stderr, r.stderr


def test_config_json_records_the_preset_shape_and_an_older_run_resumes(tmp_path, tiny_preset, small_shards,
                                                                       tiny_overrides, kgpt2_cli):
    """A run on a preset recorded model.* as the defaults (12 layers, 768 wide, 1,024 positions) whatever the preset
    was (the demo read its context from there); keys that apply to presets (dropout) still do."""
    args = [*_no_shape(tiny_overrides), f"checkpoints_root={tmp_path}", f"model.preset={tiny_preset}",
            f"data.shards={small_shards}", "run=recorded", "train.stages=[1]", "model.dropout=0.1"]
    r = kgpt2_cli("-q", "train", *args)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "recorded"
    model = json.loads((run / "config.json").read_text())["model"]
    assert {k: model[k] for k in ("num_layers", "num_heads", "hidden_dim", "intermediate_dim", "max_sequence_length",
                                  "vocabulary_size", "dropout")} == {
        "num_layers": 2, "num_heads": 2, "hidden_dim": 32, "intermediate_dim": 64, "max_sequence_length": 64,
        "vocabulary_size": 512, "dropout": 0.1}
    # a run written before this fix holds the defaults: it resumes, and that is no change of its settings
    config = json.loads((run / "config.json").read_text())
    config["model"].update(num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072,
                           max_sequence_length=1024, vocabulary_size=0)
    (run / "config.json").write_text(json.dumps(config))
    r = kgpt2_cli("-q", "train", "--run", run, "train.epochs=2")
    assert r.returncode == 0, r.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["num_layers"] == 2 and config["model"]["hidden_dim"] == 32
    (record,) = config["continuations"]
    assert record["changed"] == {"train.epochs": [1, 2]}


def test_a_stage_stopped_by_max_steps_says_so_and_counts_what_it_saw(tmp_path, tiny_preset, small_shards,
                                                                     tiny_overrides, kgpt2_cli):
    """With train.max_steps=40 of a stage's ~570 batches, "stage-1 done ... articles 4545" and stages.csv's
    `articles,4545` read as if the whole split was trained."""
    from kgpt2.data.shards import ShardSet

    articles = ShardSet(small_shards).split("train").num_articles
    r = kgpt2_cli("train", *tiny_overrides, f"checkpoints_root={tmp_path}", f"model.preset={tiny_preset}",
                  f"data.shards={small_shards}", "run=cut", 'train.stages=["rest"]', "train.max_steps=2")
    assert r.returncode == 0, r.stderr
    (line,) = [line for line in r.stderr.splitlines() if line.startswith("kgpt2: stage-1 ")]
    stage = json.loads((tmp_path / "cut" / "stages.json").read_text())[-1]
    batches = stage["of_batches"]
    assert stage["batches"] == 2 and batches > 4, stage
    seen = articles * 2 // batches
    assert line.startswith(f"kgpt2: stage-1 stopped at train.max_steps after 2 of {batches} batches: loss "), line
    assert f", articles {seen}, " in line, line
    assert seen < articles
    row = pd.read_csv(tmp_path / "cut" / "stages.csv").iloc[-1]
    assert (row["articles"], row["batches"], row["of_batches"]) == (seen, 2, batches)
    # a stage trained whole says "done", its articles all of them
    r = kgpt2_cli("train", *tiny_overrides, f"checkpoints_root={tmp_path}", f"model.preset={tiny_preset}",
                  f"data.shards={small_shards}", "run=whole", "train.stages=[3]")
    assert r.returncode == 0, r.stderr
    (line,) = [line for line in r.stderr.splitlines() if line.startswith("kgpt2: stage-1 ")]
    assert line.startswith("kgpt2: stage-1 done: loss ") and ", articles 3, " in line, line
    stage = json.loads((tmp_path / "whole" / "stages.json").read_text())[-1]
    assert stage["batches"] == stage["of_batches"] and stage["articles"] == 3, stage


def test_a_resumed_run_is_named_by_a_normal_path(tmp_path, tiny_preset, small_shards, tiny_overrides, kgpt2_cli):
    """`kgpt2 train --run "../moved é/run"` printed "run in /tmp/x/third/../moved é/run"."""
    root = tmp_path / "moved é"
    (tmp_path / "third").mkdir()
    r = kgpt2_cli("-q", "train", *tiny_overrides, f"checkpoints_root={root}", f"model.preset={tiny_preset}",
                  f"data.shards={small_shards}", "run=run", "train.stages=[1]")
    assert r.returncode == 0, r.stderr
    r = kgpt2_cli("train", "--run", "../moved é/run", "train.epochs=2", cwd=tmp_path / "third")
    assert r.returncode == 0, r.stderr
    run = root / "run"
    lines = r.stdout.strip().splitlines()
    assert lines[-3].startswith("trained 1 step (step 1 -> 2); run in ") and lines[-3].endswith(
        f"run in {run} (latest ckpt-2)"), lines
    assert shlex.split(lines[-2].removeprefix("next:")) == ["kgpt2", "evaluate", "--run", str(run)], lines
    assert f"continuing run {run} at step 1" in r.stderr and "/../" not in r.stderr, r.stderr


def test_shards_of_another_tokenizer_name_the_prepare_that_fits(tmp_path, tiny_preset, pydoc_tokenizer_dir,
                                                                char_shards, tiny_overrides, kgpt2_cli):
    """The sentence ended "run `kgpt2 prepare` with the model's preset", also for a from-scratch model, which has
    no preset but its own tokenizer folder."""
    base = [*tiny_overrides, f"checkpoints_root={tmp_path}", f"data.shards={char_shards}", "run=mismatch"]
    head = f"kgpt2: error: shard set '{char_shards}' was tokenised with another tokenizer than the model's; "
    r = kgpt2_cli("train", *base, "model.preset=scratch", f"model.tokenizer={pydoc_tokenizer_dir}")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == head + (
        f"make shards with the model's: kgpt2 prepare --tokenizer {shlex.quote(str(pydoc_tokenizer_dir))} "
        "--source SOURCE --out NEW_SHARDS (then data.shards=NEW_SHARDS)"), r.stderr
    r = kgpt2_cli("train", *base, f"model.preset={tiny_preset}")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == head + (
        f"make shards with the model's: kgpt2 prepare --preset {shlex.quote(str(tiny_preset))} --source SOURCE "
        "--out NEW_SHARDS (then data.shards=NEW_SHARDS)"), r.stderr
    assert not (tmp_path / "mismatch").exists()
