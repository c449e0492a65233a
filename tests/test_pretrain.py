"""Pre-training from scratch: own tokenizers, scratch presets, nanoGPT's split, a short run.

Everything runs on CPU with tiny shapes on real tiny Shakespeare
(../shared/data/shakespeare/input.txt, 1,115,394 characters).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from kgpt2.errors import UserError

pytestmark = pytest.mark.backend


@pytest.fixture(scope="session")
def shakespeare(shared_data):
    return shared_data / "shakespeare" / "input.txt"


@pytest.fixture(scope="session")
def char_tokenizer_dir(tmp_path_factory, shakespeare):
    from kgpt2.cli import main

    out = tmp_path_factory.mktemp("chartok") / "tok"
    assert main(["-q", "tokenizer", "train", "--char", "--source", str(shakespeare), "--out", str(out)]) == 0
    return out


def test_char_tokenizer_round_trips_shakespeare_exactly(char_tokenizer_dir, shakespeare):
    from kgpt2.model.char_tokenizer import CharTokenizer
    from kgpt2.model.tokenizer import Tokenizer

    text = shakespeare.read_text(encoding="utf-8")
    tok = Tokenizer.from_dir(char_tokenizer_dir)  # the one loader every verb uses
    assert isinstance(tok, CharTokenizer)
    assert tok.vocab_size == 66 and tok.eos_id == 65  # nanoGPT's 65 characters + end-of-text
    assert tok.chars == sorted(set(text))
    ids = tok.encode_arrays([text])[0]
    assert len(ids) == len(text) and ids.max() < 65
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode("ROMEO:\n") + [tok.eos_id]) == "ROMEO:\n"
    assert Tokenizer.from_dir(char_tokenizer_dir).hash == tok.hash
    with pytest.raises(UserError, match="not in the character tokenizer"):
        tok.encode("caf\u00e9")


def test_bpe_tokenizer_trains_and_loads_in_keras_hub(tmp_path, shakespeare):
    import keras_hub

    from kgpt2.model.tokenizer import Tokenizer
    from kgpt2.tokenizer_training import train_tokenizer

    source = tmp_path / "slice.txt"
    source.write_text(shakespeare.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    out = tmp_path / "bpe"
    tok = train_tokenizer(str(source), out, vocab_size=400)
    assert tok.vocab_size == 400 and Tokenizer.from_dir(out).hash == tok.hash
    kh = keras_hub.models.GPT2Tokenizer(vocabulary=str(out / "vocabulary.json"), merges=str(out / "merges.txt"))
    assert kh.vocabulary_size() == 400
    assert dict(kh.vocabulary) == tok.vocabulary
    assert all(kh.id_to_token(i) == t for t, i in list(tok.vocabulary.items())[::37])
    assert kh.token_to_id("<|endoftext|>") == tok.eos_id
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    assert [int(i) for i in kh.tokenize(text)] == tok.encode(text)
    with pytest.raises(UserError, match="at least 258"):
        train_tokenizer(str(source), tmp_path / "tiny", vocab_size=100)


def test_tokenizer_train_never_replaces_a_tokenizer(tmp_path, capsys):
    """Shards were encoded with the tokenizer in --out: training again there is refused, the files kept."""
    from kgpt2.cli import main

    source = tmp_path / "abc.txt"
    source.write_text("abc abc\n", encoding="utf-8")
    out = tmp_path / "tok"
    train = ["-q", "tokenizer", "train", "--source", str(source), "--out", str(out)]
    assert main(train + ["--char"]) == 0
    before = (out / "char_vocabulary.json").read_bytes()
    assert main(train + ["--char"]) == 0  # the same command again: the same tokenizer, nothing to refuse
    source.write_text("xyz\n", encoding="utf-8")
    for kind in (["--char"], ["--vocab-size", "300"]):
        assert main(train + kind) == 2
        assert "already holds another tokenizer" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["char_vocabulary.json"]
    assert (out / "char_vocabulary.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abc.txt", "tok"]  # nothing half-built beside it


def test_tokenizer_train_refuses_a_folder_of_other_files_before_training(tmp_path, capsys, monkeypatch):
    """--out holding the user's own files (no tokenizer) is refused as a used folder, before any training."""
    from kgpt2 import tokenizer_training
    from kgpt2.cli import main

    source = tmp_path / "abc.txt"
    source.write_text("abc abc\n", encoding="utf-8")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious", encoding="utf-8")
    monkeypatch.setattr(tokenizer_training, "_texts", lambda *a: pytest.fail("trained before refusing"))
    for kind in (["--char"], ["--vocab-size", "300"]):
        assert main(["-q", "tokenizer", "train", "--source", str(source), "--out", str(mine)] + kind) == 2
        assert capsys.readouterr().err == (
            f"kgpt2: error: tokenizer target '{mine}' already exists and is not empty; choose a new directory\n")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "precious"


def test_tail_split_is_nanogpts_90_10_character_split(tmp_path, char_tokenizer_dir, shakespeare):
    from kgpt2.data.shards import ShardSet, prepare
    from kgpt2.model.tokenizer import Tokenizer

    text = shakespeare.read_text(encoding="utf-8")
    tok = Tokenizer.from_dir(char_tokenizer_dir)
    out = tmp_path / "shards"
    prepare(str(shakespeare), out, tok, splits="tail:0.1", progress=False)
    shards = ShardSet(out)
    cut = int(len(text) * 0.9)  # nanoGPT: data[:int(n*0.9)], data[int(n*0.9):]
    train, val = shards.split("train"), shards.split("validation")
    assert train.num_tokens == cut + 1 and val.num_tokens == len(text) - cut + 1  # + end-of-text each
    assert tok.decode(train.tokens) == text[:cut] and tok.decode(val.tokens) == text[cut:]
    assert shards.split("test").num_tokens == 0
    for bad in ("tail:1.5", "tail:x"):
        with pytest.raises(UserError, match="between 0 and 1"):
            prepare(str(shakespeare), tmp_path / "bad", tok, splits=bad, progress=False)


TINY = ["model.num_layers=1", "model.num_heads=2", "model.hidden_dim=32", "model.intermediate_dim=64",
        "model.max_sequence_length=32", "data.sequence_length=32", "train.batch_size=8",
        "train.precision=float32", "train.device=cpu", "model.pad_vocabulary_to=0"]


@pytest.mark.slow
def test_scratch_presets_build_save_and_load(tmp_path, char_tokenizer_dir, pydoc_tokenizer):
    import keras_hub

    from kgpt2.config import ModelConfig, load_config
    from kgpt2.model.char_tokenizer import CharTokenizer
    from kgpt2.model.models import load_tokenizer
    from kgpt2.model.scratch import init_preset

    cfg = load_config("shakespeare_char", TINY + [f"model.tokenizer={char_tokenizer_dir}"])
    preset = init_preset(cfg, tmp_path / "char-preset")
    backbone = keras_hub.models.GPT2Backbone.from_preset(str(preset))
    assert (backbone.vocabulary_size, backbone.num_layers, backbone.hidden_dim) == (66, 1, 32)
    assert isinstance(load_tokenizer(ModelConfig(preset=str(preset))), CharTokenizer)
    # Same seed, same initial weights: the run's `base` is reproducible.
    again = keras_hub.models.GPT2Backbone.from_preset(str(init_preset(cfg, tmp_path / "again")))
    assert all(np.array_equal(a, b) for a, b in zip(backbone.get_weights(), again.get_weights()))

    # A BPE preset is a complete KerasHub preset: its tokenizer loads with from_preset too.
    bpe_dir = tmp_path / "bpe-tok"
    pydoc_tokenizer.save(bpe_dir)
    bpe = init_preset(load_config(None, TINY + ["model.vocabulary_size=0", f"model.tokenizer={bpe_dir}"]),
                      tmp_path / "bpe-preset")
    kh = keras_hub.models.GPT2Tokenizer.from_preset(str(bpe))
    assert kh.vocabulary_size() == pydoc_tokenizer.vocab_size
    assert keras_hub.models.GPT2Backbone.from_preset(str(bpe)).vocabulary_size == pydoc_tokenizer.vocab_size
    with pytest.raises(UserError, match="smaller than the tokenizer"):
        init_preset(load_config(None, TINY + ["model.vocabulary_size=10", f"model.tokenizer={bpe_dir}"]), tmp_path / "x")


def test_a_vocabulary_far_above_the_tokenizers_is_warned_about(pydoc_tokenizer, caplog):
    from kgpt2.config import ModelConfig
    from kgpt2.model.scratch import scratch_shape

    tokens = pydoc_tokenizer.vocab_size
    with caplog.at_level("WARNING", logger="kgpt2"):
        assert scratch_shape(ModelConfig(preset="scratch", vocabulary_size=0), pydoc_tokenizer).vocabulary_size == tokens
        assert scratch_shape(ModelConfig(preset="scratch", vocabulary_size=tokens + 64), pydoc_tokenizer)
    assert not caplog.records  # the tokenizer's size, or a little padding: nothing to say
    with caplog.at_level("WARNING", logger="kgpt2"):  # asked for GPT-2's size explicitly, with a small tokenizer
        assert scratch_shape(ModelConfig(preset="scratch", vocabulary_size=50257), pydoc_tokenizer).vocabulary_size \
            == 50257
    assert [f"{50257 - tokens} embedding rows will never be used" in r.getMessage() for r in caplog.records] == [True]


def test_pretrain_init_with_an_own_tokenizer_takes_its_vocabulary_by_default(tmp_path, kgpt2_cli, pydoc_tokenizer_dir,
                                                                            pydoc_tokenizer, caplog):
    """The default was 50,257 (GPT-2's): a 512-token tokenizer got a model with 49,745 embedding rows never used,
    unless the user knew to write model.vocabulary_size = 0."""
    import keras_hub

    shape = [f"model.tokenizer={pydoc_tokenizer_dir}", *TINY]
    with caplog.at_level("WARNING", logger="kgpt2"):
        assert kgpt2_cli("pretrain", "init", *shape, "--out", "p", cwd=tmp_path).returncode == 0
    assert keras_hub.models.GPT2Backbone.from_preset(str(tmp_path / "p")).vocabulary_size == pydoc_tokenizer.vocab_size
    assert not [r for r in caplog.records if "never be used" in r.getMessage()]
    explicit = kgpt2_cli("pretrain", "init", *shape, "model.vocabulary_size=640", "--out", "q", cwd=tmp_path)
    assert explicit.returncode == 0
    assert keras_hub.models.GPT2Backbone.from_preset(str(tmp_path / "q")).vocabulary_size == 640  # explicit: kept


@pytest.mark.slow
def test_from_scratch_run_keeps_best_checkpoint_and_learns(tmp_path, char_tokenizer_dir, shakespeare):
    """A 20-step run over 2+ epochs: evaluations every 5 steps, the best kept, every verb works."""
    from kgpt2.config import load_config
    from kgpt2.data.shards import prepare
    from kgpt2.evaluate import evaluate_run
    from kgpt2.generate import generate_from_run
    from kgpt2.model.tokenizer import Tokenizer
    from kgpt2.pretrain import run_summary
    from kgpt2.run import Run
    from kgpt2.train import train
    from kgpt2.training.checkpoints import CheckpointManager
    from kgpt2.training.periodic_eval import read_best, read_evals
    from kgpt2.training.run_logs import read_steps
    from kgpt2.training.training_data import describe_plan

    source = tmp_path / "shakespeare-5k.txt"  # ~18 batches per epoch: 20 steps span 2 epochs
    source.write_text(shakespeare.read_text(encoding="utf-8")[:5_000], encoding="utf-8")
    prepare(str(source), tmp_path / "shards", Tokenizer.from_dir(char_tokenizer_dir), splits="tail:0.1", progress=False)
    cfg = load_config("shakespeare_char", TINY + [
        f"model.tokenizer={char_tokenizer_dir}", f"data.shards={tmp_path / 'shards'}",
        f"checkpoints_root={tmp_path / 'runs'}", "run=tiny-char", "train.max_steps=20",
        "train.eval_every=5", "train.eval_batches=2", "train.steps_per_execution=5",
        "train.learning_rate=0.01", "train.min_learning_rate=0.001", "train.warmup_steps=2"])
    plan = describe_plan(cfg)
    assert plan[0]["epochs"] == 2 and plan[0]["steps"] == 20
    result = train(cfg, verbose=0)
    run_dir = cfg.run_dir
    assert result.global_step == 20
    assert json.loads((run_dir / "config.json").read_text())["model"]["preset"] == "preset"  # relative to the run
    assert Run(run_dir).config().model.preset == str(run_dir.absolute() / "preset")

    evals = read_evals(run_dir)
    assert list(evals["step"]) == [0, 5, 10, 15, 20]
    assert evals["val_loss"].iloc[-1] < evals["val_loss"].iloc[0] - 0.3  # it learns
    assert evals["train_loss"].iloc[-1] < evals["train_loss"].iloc[0] - 0.3
    best = read_best(run_dir)
    assert best["val_loss"] == pytest.approx(evals["val_loss"][1:].min(), abs=1e-5)
    assert Run(run_dir).checkpoint("best").id == best["id"]
    assert best["id"] in {c.id for c in CheckpointManager(run_dir).list()}  # retention spared it
    assert list(read_steps(run_dir)["step"])[-1] == 20 and (run_dir / "eval_loss.png").is_file()

    # `best` is a checkpoint id for evaluate and generate; same batches -> same loss.
    row = evaluate_run(run_dir, "best", split="validation", max_batches=2, save=False)[0]
    assert row["loss"] == pytest.approx(best["val_loss"], rel=1e-4)
    text = generate_from_run(run_dir, "ROMEO:", checkpoint="best", sampler="greedy", max_new_tokens=10)
    assert isinstance(text, str) and len(text) <= 10

    summary = run_summary(run_dir)
    assert summary["steps"] == 20 and summary["best_val_loss"] == pytest.approx(best["val_loss"], abs=1e-4)


def test_pretrain_init_takes_overrides_after_its_options(tmp_path, char_tokenizer_dir):
    import keras_hub

    from kgpt2.cli import main

    config = tmp_path / "c.toml"
    config.write_text(f'[model]\npreset = "scratch"\ntokenizer = "{char_tokenizer_dir}"\nnum_layers = 3\n'
                      'num_heads = 2\nhidden_dim = 16\nintermediate_dim = 32\nmax_sequence_length = 16\n')
    assert main(["-q", "pretrain", "init", "--config", str(config), "--out", str(tmp_path / "p"),
                 "model.num_layers=1", "model.vocabulary_size=0", "data.sequence_length=16"]) == 0
    assert keras_hub.models.GPT2Backbone.from_preset(str(tmp_path / "p")).num_layers == 1


def test_pretrain_init_never_replaces_a_preset(tmp_path, char_tokenizer_dir, capsys):
    """A run's checkpoints were trained from its preset: a second init (default --out) must not strand them."""
    import keras_hub

    from kgpt2.cli import main

    shape = [f"model.tokenizer={char_tokenizer_dir}", f"checkpoints_root={tmp_path}", "run=r", *TINY]
    init = ["-q", "pretrain", "init", "--config", "shakespeare_char"]
    assert main(init + shape) == 0
    preset = tmp_path / "r" / "preset"
    before = {f.name: f.read_bytes() for f in preset.iterdir() if f.is_file()}
    assert main(init + shape + ["model.num_layers=2"]) == 2
    assert "already has its preset" in capsys.readouterr().err
    assert main(init + ["--out", str(preset)] + shape + ["model.num_layers=2"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in preset.iterdir() if f.is_file()} == before
    assert keras_hub.models.GPT2Backbone.from_preset(str(preset)).num_layers == 1
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no half-built folder left beside it


def test_pretrain_config_errors(tmp_path, char_tokenizer_dir):
    from kgpt2.cli import main
    from kgpt2.config import load_config
    from kgpt2.model.scratch import resolve_scratch

    assert main(["tokenizer", "train", "--source", "pydoc", "--out", str(tmp_path / "t")]) == 2  # neither --char nor size
    both = ["tokenizer", "train", "--char", "--vocab-size", "512", "--source", "pydoc", "--out", str(tmp_path / "t")]
    assert main(both) == 2 and not (tmp_path / "t").exists()  # the size was silently dropped
    cfg = load_config("shakespeare_char", TINY + [
        f"model.tokenizer={char_tokenizer_dir}", f"checkpoints_root={tmp_path}", "run=r"])
    resolve_scratch(cfg)
    changed = load_config("shakespeare_char", TINY + [
        f"model.tokenizer={char_tokenizer_dir}", f"checkpoints_root={tmp_path}", "run=r", "model.num_layers=2"])
    with pytest.raises(UserError, match="another shape"):
        resolve_scratch(changed)


def test_lora_on_a_model_from_scratch_is_warned_about(tmp_path, char_tokenizer_dir, caplog):
    """The chat recipe with model.preset = "scratch" trained only adapters over random weights: loss stayed at
    ln(vocabulary), silently."""
    from kgpt2.config import load_config
    from kgpt2.model.scratch import resolve_scratch

    common = TINY + [f"model.tokenizer={char_tokenizer_dir}", f"checkpoints_root={tmp_path}"]
    with caplog.at_level("WARNING", logger="kgpt2"):
        resolve_scratch(load_config("shakespeare_char", common + ["run=full"]))
        assert "LoRA on a model from scratch" not in caplog.text
        resolve_scratch(load_config("shakespeare_char", common + ["run=adapters", "lora.enabled=true"]))
    assert "LoRA on a model from scratch trains only its adapters" in caplog.text
    # The same through a preset `kgpt2 pretrain init --out DIR` made, named as model.preset: it was silent.
    caplog.clear()
    made = tmp_path / "full" / "preset"
    with caplog.at_level("WARNING", logger="kgpt2"):
        resolve_scratch(load_config("shakespeare_char", common + ["run=p", f"model.preset={made}"]))
        assert "LoRA on a model from scratch" not in caplog.text
        resolve_scratch(load_config("shakespeare_char", common + ["run=q", f"model.preset={made}", "lora.enabled=true"]))
    assert "LoRA on a model from scratch trains only its adapters" in caplog.text
