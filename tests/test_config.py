"""Config values are checked when read: one sentence naming the key, the value and what is allowed."""

import json
import shutil

import numpy as np
import pytest

from kgpt2.config import load_config
from kgpt2.errors import UserError

pytestmark = pytest.mark.backend_neutral  # config files and their refusals


@pytest.mark.parametrize("overrides, message", [
    (["train.oversize=scal"], 'train.oversize must be one of "reject", "scale"; got "scal"'),
    (["train.precision=fp16"], 'train.precision must be one of "auto", "float32", "mixed_bfloat16", "mixed_float16"; got "fp16"'),
    (["train.batch_size=0"], "train.batch_size must be at least 1; got 0"),
    (["train.batch_size=-4"], "train.batch_size must be at least 1; got -4"),
    (["data.sequence_length=0"], "data.sequence_length must be at least 1; got 0"),
    (["train.epochs=-1"], "train.epochs must be at least 0; got -1"),
    (["lora.rank=0"], "lora.rank must be at least 1; got 0"),
    (["model.dropout=1.0"], "model.dropout must be below 1.0; got 1.0"),
    (["model.quantize=nf4"], 'model.quantize must be one of "", "int8", "int4"; got "nf4"'),
    (["generate.sampler=nucleus"], 'generate.sampler must be one of "greedy", "top_k", "top_p", "beam", "random"; got "nucleus"'),
    (["align.template=chatml"], 'align.template must be one of "plain", "instruction", "chat"; got "chatml"'),
    (['lora.targets=["qkv"]'], "lora.targets must be a list of distinct names from"),
    (["train.device=gpu1"], 'train.device must be one of "auto", "cpu", "gpu", "gpu:N"; got "gpu1"'),
    (["train.epochs=0"], "train.epochs = 0 means \"as many as train.max_steps needs\"; set train.max_steps too"),
    (["model.quantize=int8", "lora.enabled=false"], 'model.quantize = "int8" freezes the base model; set lora.enabled = true'),
    (["train.batchsize=4"], "unknown config key 'train.batchsize'; did you mean 'train.batch_size'?"),
    (["trian.batch_size=4"], "unknown config key 'trian'; did you mean 'train'?"),
    # A plan no corpus could hold is refused with the config, before the shards are looked for.
    (['train.stages=["rest", 10]'], '"rest" may only be the last stage of train.stages'),
    (["train.stages=[0.7, 0.6]"], "the fractions in train.stages add up to 130% of the corpus"),
    (["train.stages=[]"], "train.stages must be a non-empty list"),
    # A list typed without its "]" was the string "[10", refused as a stage named '[10'.
    (["train.stages=[10"], "override 'train.stages=[10': the value is not a valid TOML list (Unclosed array)"),
    (["train.stages=[10, rest]"], "override 'train.stages=[10, rest]': the value is not a valid TOML list"),
    (['lora.targets="query'], "override 'lora.targets=\"query': the value is not a valid TOML quoted string "
                              "(Unterminated string); write it whole and quote it for the shell, e.g. "
                              "lora.targets='\"text\"'"),
    (['lora.targets=["query"'], "override 'lora.targets=[\"query\"': the value is not a valid TOML list (Unclosed "
                                "array); write it whole and quote it for the shell, e.g. lora.targets='[\"a\", \"b\"]'"),
])
def test_bad_values_are_one_sentence(overrides, message):
    with pytest.raises(UserError) as e:
        load_config(None, overrides)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_good_values_pass_and_a_toml_file_is_checked_too(tmp_path):
    cfg = load_config(None, ["train.epochs=0", "train.max_steps=5", "train.precision=mixed_float16", "train.devices=all"])
    assert (cfg.train.epochs, cfg.train.precision, cfg.train.devices) == (0, "mixed_float16", "all")
    one = load_config(None, ["align.data=checkpoints/alpaca/votes.jsonl", "lora.targets=all-linear"])
    assert (one.align.data, one.lora.targets) == (["checkpoints/alpaca/votes.jsonl"], ["all-linear"])  # one item: a list
    path = tmp_path / "c.toml"
    path.write_text('[data]\nwindows = "stacked"\n')
    with pytest.raises(UserError, match='data.windows must be one of "auto", "packed", "example", "packed_examples"; got "stacked"'):
        load_config(path)


@pytest.mark.parametrize("bad", ["train.batch_size=0", "train.batch_size=-4", "data.sequence_length=0",
                                 "train.oversize=scal", 'train.stages=["rest", 10]'])
def test_cli_refuses_bad_values_before_making_a_run(tmp_path, bad):
    from kgpt2.cli import main

    assert main(["train", f"checkpoints_root={tmp_path}", "data.shards=nowhere", bad]) == 2
    assert list(tmp_path.iterdir()) == []  # no junk run folder


@pytest.mark.parametrize("preset", ["hf://org/gpt2-tiny", "kaggle://org/gpt2/keras/tiny/1"])
def test_sequence_length_beyond_a_hub_handles_context(preset, tmp_path, tiny_preset, monkeypatch, capsys):
    """A handle's config.json is downloaded (here served from the tiny preset) for its context, before any run
    folder: one sentence, not PositionEmbedding's traceback at the first step."""
    import huggingface_hub
    import kagglehub

    from kgpt2.cli import main
    from kgpt2.config import ModelConfig
    from kgpt2.model import hf_configs
    from kgpt2.model.models import context_length

    asked = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo_id, filename, **_: asked.append(repo_id) or str(tiny_preset / filename))
    monkeypatch.setattr(kagglehub, "model_download",
                        lambda handle, path=None: asked.append(handle) or str(tiny_preset / path))
    monkeypatch.setattr(hf_configs, "unreachable_hub_host", lambda: None)  # the Hub is served here: reachable
    assert context_length(ModelConfig(preset=preset)) == 64
    assert asked == [preset.split("://")[1]]
    args = ["train", f"model.preset={preset}", "data.sequence_length=65", "data.shards=x", f"checkpoints_root={tmp_path}"]
    assert main(args) == 2
    assert capsys.readouterr().err == (f"kgpt2: error: data.sequence_length is 65, but model '{preset}' attends to "
                                       "at most 64 tokens; set data.sequence_length <= 64\n")
    assert list(tmp_path.iterdir()) == []


def test_sequence_length_beyond_the_models_context(tmp_path, tiny_preset, pydoc_shards):
    from kgpt2.align import align
    from kgpt2.model.models import check_sequence_length, context_length
    from kgpt2.train import train

    cfg = load_config(None, [f"model.preset={tiny_preset}", "data.sequence_length=65", f"data.shards={pydoc_shards}",
                             f"checkpoints_root={tmp_path}", "lora.enabled=false"])
    assert context_length(cfg.model) == 64  # read from the preset's config.json, as the backbone gets it
    with pytest.raises(UserError, match=r"^data.sequence_length is 65, but model '.*' attends to at most 64 tokens"):
        train(cfg)
    with pytest.raises(UserError, match="attends to at most 64 tokens"):
        align(cfg)
    assert list(tmp_path.iterdir()) == []
    check_sequence_length(load_config(None, ["model.preset=gpt2_base_en", "data.sequence_length=1024"]))
    with pytest.raises(UserError, match="at most 1024 tokens"):
        check_sequence_length(load_config(None, ["model.preset=gpt2_base_en", "data.sequence_length=2048"]))
    with pytest.raises(UserError, match="at most 32 tokens"):
        check_sequence_length(load_config(None, ["model.preset=scratch", "model.max_sequence_length=32"]))


@pytest.mark.parametrize("victim, message", [
    ("train.bin", "is missing train.bin"),
    ("validation.offsets.npy", "is missing validation.offsets.npy"),
    ("truncate:train.bin", "has a damaged train.bin"),
])
def test_shards_with_a_missing_or_cut_file_are_one_sentence(tmp_path, pydoc_shards, victim, message):
    from kgpt2.data.shards import ShardSet

    shards = tmp_path / "shards"
    shutil.copytree(pydoc_shards, shards)
    name = victim.split(":")[-1]
    if victim.startswith("truncate:"):
        data = (shards / name).read_bytes()
        (shards / name).write_bytes(data[: len(data) // 2])
    else:
        (shards / name).unlink()
    with pytest.raises(UserError, match=f"^shard set '{shards}' {message}"):
        ShardSet(shards)
    assert json.loads((shards / "manifest.json").read_text())["format"]  # nothing else touched
    assert np.asarray(ShardSet(pydoc_shards).split("train").tokens).size > 0


def test_every_model_signature_key_names_a_config_key():
    """Resume and init_from refusals name what differs by SIGNATURE_KEYS; a signature key missing there would
    reach the user under its internal name."""
    from kgpt2.config import SIGNATURE_KEYS, load_config

    everything = load_config(None, ["model.preset=scratch", "lora.enabled=true", "lora.use_rslora=true",
                                    "lora.use_dora=true", "model.quantize=int8", "model.pad_vocabulary_to=64",
                                    "model.vocabulary_size=100"])
    keys = set(everything.model_signature())
    assert keys == set(SIGNATURE_KEYS), keys ^ set(SIGNATURE_KEYS)
    for dotted in SIGNATURE_KEYS.values():
        section, name = dotted.split(".")
        assert hasattr(getattr(everything, section), name), dotted


def test_a_folder_given_as_config_says_what_to_pass(tmp_path, monkeypatch):
    """`--config RUN` (a run's folder) was 'config file ... does not exist', of a folder that exists."""
    from kgpt2.config import Config, save_config

    run = tmp_path / "my run"
    run.mkdir()
    save_config(Config(), run / "config.json")
    with pytest.raises(UserError, match=f"^--config '{run}' is a run's folder; to resume that run use --run '{run}', "
                                        f"to start a new one from its settings --config '{run}/config.json'$"):
        load_config(run)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(UserError, match="holds a Hugging Face model, not a kgpt2 run"):
        load_config(hf)
    shards = tmp_path / "shards"  # a shard set's manifest.json: "unknown config key 'format'; did you mean 'lora'?"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({"format": 3, "splits": {}, "content_hash": "x"}))
    with pytest.raises(UserError, match=f"^'{shards}/manifest.json' is the manifest of a shard set .*not a run "
                                        f"config; train on the set with data.shards = \"{shards}\"$"):
        load_config(shards / "manifest.json")
    with pytest.raises(UserError, match="is a folder; give a TOML config file, a run's config.json or a recipe"):
        load_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pubmed_lora").mkdir()  # a run named like a recipe: the same command keeps meaning the recipe
    assert load_config("pubmed_lora").lora.enabled


@pytest.mark.parametrize("override", ["train.learning_rate=nan", "generate.temperature=inf", "lora.alpha=-inf",
                                      "align.beta=nan", "model.dropout=nan"])
def test_a_value_that_is_no_finite_number_is_refused(override):
    """NaN passed every bound (`nan <= 0` is False): `kgpt2 generate --temperature nan` printed the prompt alone
    and exited 0, a NaN learning rate was accepted."""
    from kgpt2.config import load_config

    key, value = override.split("=")
    with pytest.raises(UserError, match=rf"^{key} must be a finite number; got {value}$"):
        load_config(None, [override])


def test_temperature_zero_points_to_the_greedy_sampler():
    """OpenAI's API reads temperature 0 as "always the most likely token", and users carry that habit to
    `kgpt2 generate --temperature 0`; the refusal names the option that does it."""
    from kgpt2.config import load_config

    with pytest.raises(UserError, match=r"^generate.temperature must be above 0; got 0.0 \(.*use --sampler greedy"):
        load_config(None, ["generate.temperature=0"])
