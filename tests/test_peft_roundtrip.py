"""kgpt2's own PEFT exports, out and back in: PEFT computes the run, `lora.init_from` restores it exactly.

Oracles: PEFT on transformers' GPT2LMHeadModel (torch CPU) for what an exported adapter computes, the run's
own logits for the round trip (`model.preset = EXPORT/base`, `lora.init_from = EXPORT`). The tiny GPT-2
(2 layers, 32 wide, the pydoc BPE); float32 logits within 1e-4.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.backend

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from test_adapters import ATOL, IDS, kgpt2_lm, kgpt2_logits, peft_logits, perturb  # noqa: E402  (the oracles)

from kgpt2.errors import UserError  # noqa: E402

QKV_OUT = ["query", "key", "value", "attention_output"]  # the alpaca, chat and qlora recipes' targets


def lora_overrides(targets, rank=4, alpha=8.0, *extra) -> list[str]:
    return ["lora.enabled=true", f"lora.rank={rank}", f"lora.alpha={alpha}", f"lora.targets={json.dumps(targets)}",
            "train.precision=float32", *extra]


def hf_logits(directory, ids=IDS) -> np.ndarray:
    with torch.no_grad():
        return transformers.GPT2LMHeadModel.from_pretrained(directory).eval()(torch.tensor([ids])).logits[0].numpy()


VARIANTS = {
    "qkv-attn-out": (QKV_OUT, []),
    "default-qv": (["query", "value"], []),
    "all-linear": (["all-linear"], []),
    "value-only": (["value"], []),
    "rslora-qk-mlp": (["query", "key", "feedforward_intermediate_dense"], ["lora.use_rslora=true"]),
    "dora-qkv-attn-out": (QKV_OUT, ["lora.use_dora=true"]),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_own_export_comes_back_with_the_runs_settings_and_logits(variant, hf_base, tmp_path):
    from kgpt2.model.adapters import resolve_targets
    from kgpt2.model.peft_adapters import needed_settings, read_peft_adapter, write_peft_adapter

    targets, extra = VARIANTS[variant]
    overrides = lora_overrides(targets, 4, 8.0, *extra)
    model, cfg = kgpt2_lm(hf_base, *overrides)
    perturb(model)
    ours = kgpt2_logits(model)
    adapter = write_peft_adapter(model.backbone, cfg.lora, tmp_path / "adapter")
    np.testing.assert_allclose(peft_logits(hf_base, adapter), ours, atol=ATOL, rtol=0)  # the export is the run
    need = needed_settings(*read_peft_adapter(adapter))
    assert (need.rank, need.alpha, need.targets) == (4, pytest.approx(8.0), list(resolve_targets(targets)))
    back, _ = kgpt2_lm(hf_base, *overrides, f"lora.init_from={adapter}")
    np.testing.assert_allclose(kgpt2_logits(back), ours, atol=ATOL, rtol=0)
    mine, theirs = model.trainable_variables, back.trainable_variables  # the same adapters, not only the same sums
    assert [v.name for v in theirs] == [v.name for v in mine]
    for v, w in zip(mine, theirs):
        np.testing.assert_allclose(np.asarray(w), np.asarray(v), atol=1e-6, rtol=0)


def _without_kgpt2_metadata(adapter) -> None:
    """Rewrite the weights file as PEFT's save_pretrained (and kgpt2 before it named the blocks) writes it."""
    from safetensors.numpy import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    save_file(load_file(str(path)), str(path), metadata={"format": "pt"})


def test_untrained_and_unlabelled_exports_keep_the_runs_targets(hf_base, tmp_path):
    """An untrained adapter (`--checkpoint base`: B all zeros) is told apart by the file's labels; a trained
    one without them (an older kgpt2 export) by B's block-diagonal layout."""
    from kgpt2.model.peft_adapters import needed_settings, read_peft_adapter, write_peft_adapter

    model, cfg = kgpt2_lm(hf_base, *lora_overrides(["query", "value"]))
    untrained = write_peft_adapter(model.backbone, cfg.lora, tmp_path / "untrained")
    assert needed_settings(*read_peft_adapter(untrained)).targets == ["query", "value"]
    perturb(model)
    old = write_peft_adapter(model.backbone, cfg.lora, tmp_path / "old")
    _without_kgpt2_metadata(old)
    assert needed_settings(*read_peft_adapter(old)).targets == ["query", "value"]
    back, _ = kgpt2_lm(hf_base, *lora_overrides(["query", "value"]), f"lora.init_from={old}")
    np.testing.assert_allclose(kgpt2_logits(back), kgpt2_logits(model), atol=ATOL, rtol=0)
    _without_kgpt2_metadata(untrained)  # nothing says which projections own the blocks: one fused adapter
    need = needed_settings(*read_peft_adapter(untrained))
    assert (need.rank, need.targets) == (8, ["query", "key", "value"])


def test_adapter_with_per_module_ranks_is_refused_naming_them(hf_base, tmp_path):
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, fan_in_fan_out=True, task_type="CAUSAL_LM",
                             target_modules=["c_attn", "c_fc"], rank_pattern={"c_fc": 2})
    model = peft.get_peft_model(transformers.GPT2LMHeadModel.from_pretrained(hf_base), config)
    model.save_pretrained(tmp_path / "mixed")
    with pytest.raises(UserError) as refused:
        kgpt2_lm(hf_base, *lora_overrides(["query", "key", "value", "feedforward_intermediate_dense"]),
                 f"lora.init_from={tmp_path / 'mixed'}")
    message = str(refused.value)
    assert "\n" not in message and str(tmp_path / "mixed") in message
    assert "attn.c_attn rank 4 alpha 8" in message and "mlp.c_fc rank 2 alpha 8" in message
    assert "one r and lora_alpha" in message and "merge_and_unload" in message


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, tiny_preset, pydoc_shards, make_tiny_config):
    """A LoRA run on an int8 base with the qlora recipe's targets, a few steps."""
    from kgpt2.train import train

    root = tmp_path_factory.mktemp("qlora")
    cfg = make_tiny_config(root, tiny_preset, pydoc_shards, "run=qlora", "model.quantize=int8",
                           *lora_overrides(QKV_OUT, 4, 8.0), "train.learning_rate=0.05",
                           "train.stages=[4]", "train.max_steps=2", "train.eval_batches=1")
    train(cfg, verbose=0)
    return cfg.run_dir


@pytest.mark.slow
def test_quantised_run_exports_to_peft_and_comes_back(qlora_run, tmp_path, kgpt2_cli):
    from kgpt2.run import load_model

    for fmt in ("peft", "hf"):
        done = kgpt2_cli("export", "--run", qlora_run, "--to", fmt, fmt, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    model, _, cfg = load_model(qlora_run)
    ours, base = kgpt2_logits(model), hf_logits(tmp_path / "peft" / "base")
    theirs = peft_logits(tmp_path / "peft" / "base", tmp_path / "peft")
    assert np.abs(theirs - base).max() > 0.05  # the adapter is trained and does something
    # The dequantised base + adapter is the merged export exactly; the run itself also quantises the int8
    # layers' input, which a float model cannot: the documented 1% of the logits' range.
    np.testing.assert_allclose(theirs, hf_logits(tmp_path / "hf"), atol=ATOL, rtol=0)
    np.testing.assert_allclose(theirs, ours, atol=0.01 * np.abs(ours).max(), rtol=0)
    provenance = json.loads((tmp_path / "peft" / "kgpt2_export.json").read_text())
    assert provenance["dequantised_from"] == "int8" and provenance["lora_merged"] is False
    # Back in, on its exported base quantised again: the run's own logits.
    back, _ = kgpt2_lm(tmp_path / "peft" / "base", *lora_overrides(QKV_OUT, 4, 8.0, "model.quantize=int8",
                                                                    f"lora.init_from={tmp_path / 'peft'}"))
    np.testing.assert_allclose(kgpt2_logits(back), ours, atol=ATOL, rtol=0)


@pytest.mark.slow
def test_base_checkpoint_export_says_no_adapter_was_merged(qlora_run, tmp_path, kgpt2_cli):
    done = kgpt2_cli("export", "--run", qlora_run, "--checkpoint", "base", "--to", "hf", "base-hf", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    provenance = json.loads((tmp_path / "base-hf" / "kgpt2_export.json").read_text())
    assert provenance["checkpoint"] == "base" and provenance["lora_merged"] is False
    done = kgpt2_cli("export", "--run", qlora_run, "--to", "hf", "latest-hf", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "latest-hf" / "kgpt2_export.json").read_text())["lora_merged"] is True
    # What was exported agrees: the base checkpoint is the run's (dequantised) base, with nothing added.
    done = kgpt2_cli("export", "--run", qlora_run, "--to", "peft", "peft", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(hf_logits(tmp_path / "base-hf"), hf_logits(tmp_path / "peft" / "base"), atol=ATOL,
                               rtol=0)
