"""LoRA, rsLoRA and DoRA adapters checked against PEFT itself (torch CPU) as the oracle.

The tiny GPT-2 (2 layers, 32 wide, the pydoc BPE) is written as a Hugging
Face directory; kgpt2 loads it as its preset, PEFT's adapters go on top of
transformers' copy of the same weights. Tolerance 1e-4 on float32 logits.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.backend

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from kgpt2.errors import UserError  # noqa: E402

ATOL = 1e-4
IDS = [5, 17, 200, 33, 9, 411, 2, 77, 150, 3, 64, 90]


def kgpt2_lm(preset, *overrides):
    from kgpt2.config import load_config
    from kgpt2.model.models import build_causal_lm

    cfg = load_config(None, [f"model.preset={preset}", "lora.enabled=true", "lora.rank=4", "lora.alpha=8",
                             "train.precision=float32", *overrides])
    return build_causal_lm(cfg), cfg


def perturb(model, seed=0) -> None:
    """B starts at zero and DoRA's magnitude at ||W||: move them (and the biases) so the adapter does something."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        if any(k in v.path for k in ("lora_kernel_b", "dora_magnitude", "bias")):
            v.assign(np.asarray(v) + rng.normal(0, 0.2, v.shape).astype("float32"))


def kgpt2_logits(model, ids=IDS, training=False) -> np.ndarray:
    x = np.array([ids], "int32")
    out = np.asarray(model({"token_ids": x, "padding_mask": np.ones_like(x, bool)}, training=training))[0]
    return out[:, :model.backbone.real_vocabulary_size] if hasattr(model.backbone, "real_vocabulary_size") else out


def peft_logits(base_dir, adapter_dir, ids=IDS) -> np.ndarray:
    base = transformers.GPT2LMHeadModel.from_pretrained(base_dir)
    model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


VARIANTS = {
    "lora-qv": ["lora.targets=['query', 'value']", "lora.dropout=0.1"],
    "rslora-attn-mlp-out": ["lora.use_rslora=true",
                            "lora.targets=['query', 'key', 'value', 'attention_output', 'feedforward_output_dense']"],
    "dora-all-linear": ["lora.use_dora=true", "lora.targets=['all-linear']"],
    "dora-k-and-mlp": ["lora.use_dora=true", "lora.targets=['key', 'feedforward_intermediate_dense']"],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kgpt2_adapter_loads_in_peft_with_the_same_logits(variant, hf_base, tmp_path):
    from kgpt2.model.peft_adapters import write_peft_adapter

    model, cfg = kgpt2_lm(hf_base, *VARIANTS[variant])
    plain = kgpt2_logits(model)
    perturb(model)
    ours = kgpt2_logits(model)
    assert np.abs(ours - plain).max() > 0.05  # the adapters really change the model
    write_peft_adapter(model.backbone, cfg.lora, tmp_path / "adapter")
    theirs = peft_logits(hf_base, tmp_path / "adapter")
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)


PEFT_VARIANTS = {
    "lora-c_attn": dict(target_modules=["c_attn"]),
    "rslora-all": dict(target_modules=["c_attn", "c_proj", "c_fc"], use_rslora=True),
    "dora-c_attn-c_fc": dict(target_modules=["c_attn", "c_fc"], use_dora=True),
}


def peft_adapter(hf_base, out, seed=0, **options):
    """A PEFT-made adapter on the base, its B (and DoRA magnitude) moved off the identity."""
    torch.manual_seed(seed)
    base = transformers.GPT2LMHeadModel.from_pretrained(hf_base)
    config = peft.LoraConfig(r=4, lora_alpha=8, fan_in_fan_out=True, task_type="CAUSAL_LM", **options)
    model = peft.get_peft_model(base, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_magnitude" in name:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(out)
    return out


@pytest.mark.parametrize("variant", list(PEFT_VARIANTS))
def test_peft_adapter_starts_a_kgpt2_run_with_peft_logits(variant, hf_base, tmp_path):
    from kgpt2.model.peft_adapters import needed_settings, read_peft_adapter

    options = PEFT_VARIANTS[variant]
    adapter = peft_adapter(hf_base, tmp_path / "adapter", **options)
    need = needed_settings(*read_peft_adapter(adapter))
    overrides = [f"lora.init_from={adapter}", f"lora.targets={json.dumps(need.targets)}",
                 f"lora.use_rslora={str(need.use_rslora).lower()}", f"lora.use_dora={str(need.use_dora).lower()}"]
    model, _ = kgpt2_lm(hf_base, *overrides)
    theirs = peft_logits(hf_base, adapter)
    np.testing.assert_allclose(kgpt2_logits(model), theirs, atol=ATOL, rtol=0)
    if "c_attn" in options["target_modules"]:
        assert need.targets[:3] == ["query", "key", "value"]  # the fused c_attn, split


def test_peft_adapter_with_other_settings_is_refused_in_one_sentence(hf_base, tmp_path):
    adapter = peft_adapter(hf_base, tmp_path / "adapter", target_modules=["c_fc"], use_dora=True)
    with pytest.raises(UserError, match=r"needs lora\.targets=\[\"feedforward_intermediate_dense\"\] lora\.use_dora=true"
                                        r"|needs lora\.use_dora=true lora\.targets"):
        kgpt2_lm(hf_base, f"lora.init_from={adapter}")
    with pytest.raises(UserError, match="not a PEFT adapter directory"):
        kgpt2_lm(hf_base, f"lora.init_from={tmp_path}")
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(dict(config, modules_to_save=["lm_head"])))
    with pytest.raises(UserError, match="modules_to_save"):
        kgpt2_lm(hf_base, f"lora.init_from={adapter}", "lora.targets=['feedforward_intermediate_dense']",
                 "lora.use_dora=true")


def test_dropout_on_the_adapter_input_only_in_training():
    import keras

    from kgpt2.config import LoraConfig
    from kgpt2.model.adapters import add_adapter

    layer = keras.layers.Dense(16)
    layer.build((None, 16))
    add_adapter(layer, LoraConfig(rank=16, alpha=16.0, dropout=0.3))
    w = np.random.default_rng(0).normal(size=(16, 16)).astype("float32")
    layer.kernel.assign(w)
    x = np.ones((4096, 16), "float32")
    # B = 0: the adapter adds nothing, so training and evaluation give the base exactly (no dropout on it).
    np.testing.assert_allclose(np.asarray(layer(x, training=True)), x @ w + np.asarray(layer.bias), rtol=1e-5)
    layer.kernel.assign(np.zeros_like(w))
    layer.lora_kernel_a.assign(np.eye(16, dtype="float32"))
    layer.lora_kernel_b.assign(np.eye(16, dtype="float32"))  # adapter output = dropout(x)
    first, second = np.asarray(layer(x, training=True)), np.asarray(layer(x, training=True))
    assert not np.array_equal(first, second)
    assert abs((first == 0).mean() - 0.3) < 0.02  # the expected fraction dropped
    np.testing.assert_allclose(first[first != 0], 1 / 0.7, rtol=1e-5)  # inverted dropout keeps the mean
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    np.testing.assert_array_equal(np.asarray(layer(x)), x)


def test_dropout_in_a_model_off_in_evaluation(hf_base):
    model, _ = kgpt2_lm(hf_base, "lora.dropout=0.5", "lora.targets=['all-linear']")
    perturb(model)
    assert not np.array_equal(kgpt2_logits(model, training=True), kgpt2_logits(model, training=True))
    np.testing.assert_array_equal(kgpt2_logits(model), kgpt2_logits(model))


def test_keras_hub_lora_files_round_trip_and_dora_refuses(hf_base, tmp_path):
    model, _ = kgpt2_lm(hf_base, "lora.targets=['query', 'value', 'feedforward_output_dense']")
    perturb(model)
    path = tmp_path / "a.lora.h5"
    model.backbone.save_lora_weights(str(path))
    fresh, _ = kgpt2_lm(hf_base, "lora.targets=['query', 'value', 'feedforward_output_dense']")
    fresh.backbone.load_lora_weights(str(path))
    # keras-hub's file holds A and B only (biases are not in it): compare with biases reset
    for v, u in zip(model.trainable_variables, fresh.trainable_variables):
        if "bias" in v.path:
            v.assign(u)
    np.testing.assert_allclose(kgpt2_logits(fresh), kgpt2_logits(model), atol=1e-6)
    dora, _ = kgpt2_lm(hf_base, "lora.use_dora=true")
    with pytest.raises(UserError, match="DoRA"):
        dora.backbone.save_lora_weights(str(tmp_path / "d.lora.h5"))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantised_lora_export_matches_transformers(mode, hf_base, tiny_preset, pydoc_tokenizer, tmp_path):
    """A quantised base + adapter exports dequantised and merged: transformers computes what kgpt2 computes."""
    import keras_hub

    from kgpt2.export import write_hf
    from kgpt2.model.adapters import merged_backbone

    model, _ = kgpt2_lm(tiny_preset, f"model.quantize={mode}", "lora.targets=['all-linear']")
    perturb(model)
    ours = kgpt2_logits(model)
    plain = merged_backbone(model.backbone)
    assert not any("lora" in w.path for w in plain.weights) and all(w.dtype == "float32" for w in plain.weights)
    write_hf(plain, pydoc_tokenizer, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([IDS])).logits[0].numpy()
    # int4 layers compute with the dequantised kernel (exact); int8 layers also
    # quantise their input to int8, which the float export cannot: 1% of the logits' range.
    tolerance = ATOL if mode == "int4" else 0.01 * np.abs(ours).max()
    np.testing.assert_allclose(theirs, ours, atol=tolerance, rtol=0)
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() > 0.9
    reloaded = keras_hub.models.GPT2Backbone.from_config(plain.get_config())
    plain.save_weights(str(tmp_path / "stage.weights.h5"))  # what the trainer's stage export writes
    reloaded.load_weights(str(tmp_path / "stage.weights.h5"))


@pytest.mark.slow
def test_trained_dora_run_exports_to_peft_with_its_logits(tmp_path, tiny_preset, pydoc_shards, tiny_run, make_tiny_config,
                                                         kgpt2_cli):
    """Train a DoRA run (dropout on), `kgpt2 export --to peft`, PEFT on the exported base computes the run."""
    from kgpt2.run import load_model
    from kgpt2.train import train

    cfg = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=dora", "lora.enabled=true", "lora.use_dora=true",
                      "lora.dropout=0.1", "lora.targets=['query', 'value', 'feedforward_output_dense']",
                      "train.stages=[4]", "train.max_steps=2", "train.eval_batches=1")
    train(cfg, verbose=0)
    done = kgpt2_cli("export", "--run", cfg.run_dir, "--to", "peft", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    model, _, _ = load_model(cfg.run_dir)
    theirs = peft_logits(tmp_path / "out" / "base", tmp_path / "out")
    np.testing.assert_allclose(kgpt2_logits(model), theirs, atol=ATOL, rtol=0)
    refused = kgpt2_cli("export", "--run", tiny_run, "--to", "peft", "out2", cwd=tmp_path)  # a full fine-tune
    assert refused.returncode == 2 and "not a LoRA adapter" in refused.stderr and not (tmp_path / "out2").exists()


@pytest.mark.slow
def test_int8_run_exports_and_stage_weights_load_into_a_plain_backbone(tmp_path, tiny_preset, pydoc_shards, make_tiny_config,
                                                                       kgpt2_cli):
    import keras_hub

    from kgpt2.config import load_config
    from kgpt2.model.models import build_causal_lm
    from kgpt2.run import load_model
    from kgpt2.train import train

    cfg = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=q8", "lora.enabled=true", "model.quantize=int8",
                      "lora.targets=['all-linear']", "train.stages=[4]", "train.max_steps=2", "train.eval_batches=1",
                      "train.epochs=0")  # 2 steps are the plan, so its stage ends there (and writes stage-1.weights.h5)
    train(cfg, verbose=0)
    model, _, _ = load_model(cfg.run_dir)
    ours = kgpt2_logits(model)
    for fmt in ("hf", "preset"):
        done = kgpt2_cli("export", "--run", cfg.run_dir, "--to", fmt, fmt, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([IDS])).logits[0].numpy()
    np.testing.assert_allclose(theirs, ours, atol=0.01 * np.abs(ours).max(), rtol=0)  # int8 input quantisation
    preset = build_causal_lm(load_config(None, [f"model.preset={tmp_path / 'preset'}", "lora.enabled=false"]))
    np.testing.assert_allclose(kgpt2_logits(preset), theirs, atol=ATOL, rtol=0)
    plain = keras_hub.models.GPT2Backbone.from_preset(str(tiny_preset), load_weights=False)
    plain.load_weights(str(cfg.run_dir / "stage-1.weights.h5"))
    lm = keras_hub.models.GPT2CausalLM(backbone=plain, preprocessor=None)
    np.testing.assert_allclose(kgpt2_logits(lm), theirs, atol=ATOL, rtol=0)
