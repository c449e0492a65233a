"""Hugging Face interop, checked against transformers itself (torch CPU) as the oracle.

A randomly initialised transformers GPT2LMHeadModel (2 layers, 64 wide, the
real 50,257-token GPT-2 vocabulary) saved with `save_pretrained` must load
into kgpt2 with the same next-token logits on real PubMed text, and a kgpt2
model (full or LoRA) exported with `kgpt2 export --to hf` must reload in
transformers with kgpt2's logits. Tolerance: atol 1e-4 on fp32 logits (they
are of order 1; the differences seen are ~1e-6, from summation order).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.backend

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from kgpt2.errors import UserError  # noqa: E402

ATOL = 1e-4
N_EMBD, N_LAYER, N_HEAD, N_POSITIONS, VOCAB = 64, 2, 2, 64, 50257


@pytest.fixture(scope="module")
def text(shared_data) -> str:
    return (shared_data / "pubmed" / "sumpubmed_1000" / "abstract" / "abstract_1.txt").read_text()[:400]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, shared_data):
    """A random transformers GPT-2 saved as people save one: save_pretrained + vocab.json/merges.txt."""
    d = tmp_path_factory.mktemp("hf") / "gpt2-tiny"
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=N_POSITIONS, n_embd=N_EMBD,
                                     n_layer=N_LAYER, n_head=N_HEAD)
    transformers.GPT2LMHeadModel(config).save_pretrained(d)
    shutil.copy(shared_data / "gpt2-tokenizer" / "encoder.json", d / "vocab.json")
    shutil.copy(shared_data / "gpt2-tokenizer" / "vocab.bpe", d / "merges.txt")
    return d


def hf_logits(directory, ids) -> np.ndarray:
    model = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def kgpt2_logits(model, ids) -> np.ndarray:
    """Logits over the real vocabulary (kgpt2 pads it for speed and masks the pad)."""
    x = np.array([ids], dtype="int32")
    logits = np.asarray(model({"token_ids": x, "padding_mask": np.ones_like(x, dtype=bool)}))[0]
    assert np.all(logits[:, VOCAB:] < -1e8)  # pad columns never win
    return logits[:, :VOCAB]


def kgpt2_model(preset, lora: bool, pad: int = 64):
    from kgpt2.config import load_config
    from kgpt2.model.models import build_causal_lm, load_tokenizer

    cfg = load_config(None, [f"model.preset={preset}", f"lora.enabled={str(lora).lower()}",
                             f"model.pad_vocabulary_to={pad}", "lora.targets=['query', 'value', 'attention_output']"])
    return build_causal_lm(cfg), load_tokenizer(cfg.model), cfg


def randomise_lora(model, seed=0) -> None:
    """LoRA's B starts at zero (a no-op); make the adapters do something to merge."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        if "lora_kernel" in v.path:
            v.assign(rng.normal(0, 0.05, v.shape).astype("float32"))


def test_hf_directory_loads_with_transformers_logits(hf_dir, text):
    model, tokenizer, _ = kgpt2_model(hf_dir, lora=False)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ids = tokenizer.encode(text)[:N_POSITIONS]
    assert ids == hf_tokenizer(text)["input_ids"][:N_POSITIONS]
    assert len(ids) == N_POSITIONS
    ours, theirs = kgpt2_logits(model, ids), hf_logits(hf_dir, ids)
    assert np.abs(theirs).max() > 0.1  # not a degenerate all-zero comparison
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


def _serve_hf_hub(monkeypatch, directory) -> list:
    """huggingface_hub's download serves `directory`'s files for any repository; returns the (repo, file) asked."""
    import huggingface_hub
    from huggingface_hub.utils import EntryNotFoundError

    from kgpt2.model import hf_configs

    asked = []

    def served(repo_id, filename, **_):
        asked.append((repo_id, filename))
        if not (Path(directory) / filename).exists():
            raise EntryNotFoundError(filename)
        return str(Path(directory) / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", served)
    monkeypatch.setattr(hf_configs, "unreachable_hub_host", lambda: None)  # the Hub is served here: reachable
    return asked


def test_hf_hub_handle_loads_with_transformers_logits(hf_dir, text, monkeypatch):
    """`model.preset = "hf://org/name"` goes to keras-hub's Hugging Face download (served here from hf_dir) and
    its converter: same tokens and logits as transformers."""
    asked = _serve_hf_hub(monkeypatch, hf_dir)
    model, tokenizer, _ = kgpt2_model("hf://openai-community/gpt2", lora=False)
    assert ("openai-community/gpt2", "model.safetensors") in asked
    ids = tokenizer.encode(text)[:N_POSITIONS]
    assert ids == transformers.AutoTokenizer.from_pretrained(hf_dir)(text)["input_ids"][:N_POSITIONS]
    np.testing.assert_allclose(kgpt2_logits(model, ids), hf_logits(hf_dir, ids), atol=ATOL, rtol=0)


def test_hf_hub_variants_are_checked_as_local_ones(hf_dir, tmp_path, monkeypatch):
    """A downloaded config gets the checks of a local directory: n_inner passed on, variants refused."""
    from kgpt2.config import ModelConfig
    from kgpt2.model.models import build_backbone

    d = tmp_path / "variant"
    shutil.copytree(hf_dir, d)
    _serve_hf_hub(monkeypatch, d)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(config, n_inner=96)))
    assert build_backbone(ModelConfig(preset="hf://org/gpt2-variant"), load_weights=False).intermediate_dim == 96
    (d / "config.json").write_text(json.dumps(dict(config, activation_function="relu")))
    with pytest.raises(UserError, match="'hf://org/gpt2-variant' is a GPT-2 variant .*activation_function='relu'"):
        build_backbone(ModelConfig(preset="hf://org/gpt2-variant"))


def test_hf_hub_handle_offline_is_one_sentence(tmp_path, monkeypatch, capsys):
    """Offline, huggingface_hub fails with the network error as its cause, which keras-hub's own check would
    turn into "has no config.json": kgpt2 says there is no network."""
    import socket

    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from kgpt2.cli import main

    def offline(repo_id, filename, **_):
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except socket.gaierror as e:
            raise LocalEntryNotFoundError("cannot find the requested files in the local cache") from e

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    assert main(["train", "model.preset=hf://openai-community/gpt2", f"data.shards={tmp_path}"]) == 2
    assert capsys.readouterr().err.startswith(
        "kgpt2: error: could not download model preset 'hf://openai-community/gpt2': no network connection "
        "(and it is not in the Hugging Face cache)")


def test_hf_hub_handle_not_downloaded_and_no_network_is_said_at_once(tmp_path, monkeypatch):
    """huggingface_hub retried for ~25 s (and logged "'[Errno -2] ...' thrown while requesting HEAD") before the
    offline sentence; a handle not in the cache now asks the resolver first. A cached one still goes to the hub's
    client, which reads it from the cache."""
    import socket

    import huggingface_hub

    from kgpt2.config import ModelConfig
    from kgpt2.model.hf_configs import fetch_hub_config
    from kgpt2.model.models import build_backbone

    def no_dns(host, *args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    downloads = []
    config = tmp_path / "config.json"
    config.write_text('{"model_type": "gpt2", "n_positions": 512}')
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: downloads.append(kw) or str(config))
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: None)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match="^could not download model preset 'hf://org/gpt2-small': no network "
                                        r"connection \(and it is not in the Hugging Face cache\)"):
        build_backbone(ModelConfig(preset="hf://org/gpt2-small"), load_weights=False)
    assert downloads == []
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: str(config))
    assert fetch_hub_config("hf://org/gpt2-small")["n_positions"] == 512 and len(downloads) == 1


def test_transformers_v5_tokenizer_json_only(hf_dir, tmp_path, text):
    """transformers >= 5 saves tokenizer.json alone; kgpt2 reads its BPE from there."""
    from kgpt2.config import ModelConfig
    from kgpt2.model.models import load_tokenizer

    d = tmp_path / "v5"
    shutil.copytree(hf_dir, d)
    (d / "vocab.json").unlink()
    (d / "merges.txt").unlink()
    transformers.AutoTokenizer.from_pretrained(hf_dir).save_pretrained(d)
    assert not (d / "vocab.json").exists() and (d / "tokenizer.json").exists()
    ours = load_tokenizer(ModelConfig(preset=str(d)))
    assert ours.encode(text) == transformers.AutoTokenizer.from_pretrained(d)(text)["input_ids"]


def test_hf_variants_keras_hub_cannot_express_are_refused(hf_dir, tmp_path):
    from kgpt2.config import ModelConfig
    from kgpt2.model.models import build_backbone

    d = tmp_path / "variant"
    shutil.copytree(hf_dir, d)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(config, activation_function="relu")))
    with pytest.raises(UserError, match="activation_function='relu'"):
        build_backbone(ModelConfig(preset=str(d)))
    (d / "config.json").write_text(json.dumps(dict(config, n_inner=96)))  # keras-hub assumes 4 * n_embd
    assert build_backbone(ModelConfig(preset=str(d)), load_weights=False).intermediate_dim == 96
    (d / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no model.safetensors"):
        build_backbone(ModelConfig(preset=str(d)))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_export_merges_lora_and_transformers_agrees(hf_dir, tmp_path, text, lora):
    import keras

    from kgpt2.export import merged_backbone, write_hf

    model, tokenizer, _ = kgpt2_model(hf_dir, lora=lora)
    ids = tokenizer.encode(text)[:N_POSITIONS]
    base = kgpt2_logits(model, ids)
    if lora:
        randomise_lora(model)
    ours = kgpt2_logits(model, ids)
    if lora:  # the adapters really change the model, so equality below means a real merge
        assert np.abs(ours - base).max() > 1e-2
    plain = merged_backbone(model)
    assert plain.vocabulary_size == VOCAB and not any("lora" in w.path for w in plain.weights)
    merged = keras.Model(plain.input, plain.token_embedding(plain.output, reverse=True))
    np.testing.assert_allclose(np.asarray(merged({"token_ids": np.array([ids]),
                                                  "padding_mask": np.ones((1, len(ids)), bool)}))[0],
                               ours, atol=ATOL, rtol=0)
    out = write_hf(plain, tokenizer, tmp_path / "hf")
    np.testing.assert_allclose(hf_logits(out, ids), ours, atol=ATOL, rtol=0)
    assert transformers.AutoTokenizer.from_pretrained(out)(text)["input_ids"] == tokenizer.encode(text)


@pytest.fixture(scope="module")
def gpt2_shards(tmp_path_factory, shared_data, hf_dir):
    from kgpt2.config import ModelConfig
    from kgpt2.data.shards import prepare
    from kgpt2.model.models import load_tokenizer

    out = tmp_path_factory.mktemp("shards") / "abstracts"
    prepare(str(shared_data / "pubmed" / "sumpubmed_1000" / "abstract"), out,
            load_tokenizer(ModelConfig(preset=str(hf_dir))), fmt="folder", progress=False)
    return out


@pytest.mark.slow
def test_train_from_hf_then_export_both_formats(hf_dir, gpt2_shards, tmp_path, text, make_tiny_config):
    """HF dir -> staged LoRA run -> `kgpt2 export` hf and preset -> same logits everywhere.

    (Full fine-tuning export is covered by test_export_merges_lora_and_transformers_agrees.)
    """

    from kgpt2.cli import main
    from kgpt2.run import load_model
    from kgpt2.train import train

    cfg = make_tiny_config(tmp_path, hf_dir, gpt2_shards, "run=from-hf", "train.stages=[1, 2]",
                      "lora.enabled=true", "lora.rank=4")
    result = train(cfg, verbose=0)
    assert len(result.stages) == 2
    model, tokenizer, _ = load_model(cfg.run_dir, "latest")
    ids = tokenizer.encode(text)[:N_POSITIONS]
    ours = kgpt2_logits(model, ids)
    assert np.abs(ours - hf_logits(hf_dir, ids)).max() > 1e-3  # training changed the model

    assert main(["export", "--run", str(cfg.run_dir), "--to", "hf", str(tmp_path / "hf")]) == 0
    np.testing.assert_allclose(hf_logits(tmp_path / "hf", ids), ours, atol=ATOL, rtol=0)
    provenance = json.loads((tmp_path / "hf" / "kgpt2_export.json").read_text())
    assert provenance["checkpoint"] == result.checkpoint and provenance["lora_merged"] is True

    assert main(["export", "--run", str(cfg.run_dir), "--to", "preset", str(tmp_path / "preset")]) == 0
    for exported in (tmp_path / "preset", tmp_path / "hf"):  # both reload into kgpt2 as a preset
        reloaded, reloaded_tokenizer, _ = kgpt2_model(exported, lora=False)
        assert reloaded_tokenizer.hash == tokenizer.hash
        np.testing.assert_allclose(kgpt2_logits(reloaded, ids), ours, atol=ATOL, rtol=0)


def test_export_errors(tiny_run, tmp_path, capsys):
    from kgpt2.cli import main
    from kgpt2.export import export_run

    with pytest.raises(UserError, match="not one of hf, preset"):
        export_run(tiny_run, "onnx", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(UserError, match="already exists and is not empty"):
        export_run(tiny_run, "hf", tmp_path / "full")
    assert main(["export", "--run", str(tmp_path / "nope"), "--to", "hf", str(tmp_path / "y")]) == 2
    assert "not a kgpt2 run directory" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
