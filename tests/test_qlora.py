"""Quantised base + LoRA: train, checkpoint the adapter only, restore onto a fresh quantised base, generate."""

import numpy as np
import pytest

pytestmark = pytest.mark.backend


def _lm_logits(model, ids):
    x = {"token_ids": np.asarray([ids], "int32"), "padding_mask": np.ones((1, len(ids)), bool)}
    return np.asarray(model.predict(x, verbose=0))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantize_shrinks_the_base_and_keeps_lora_float(mode, tiny_preset):
    from kgpt2.config import load_config
    from kgpt2.model.models import build_causal_lm
    from kgpt2.model.quantize import parameter_bytes

    over = [f"model.preset={tiny_preset}", "lora.enabled=true", "train.precision=float32"]
    plain = parameter_bytes(build_causal_lm(load_config(None, over)).backbone)
    model = build_causal_lm(load_config(None, over + [f"model.quantize={mode}"]))
    q = parameter_bytes(model.backbone)
    assert "int8" in q["by_dtype"] and q["total"] < plain["total"] * (0.5 if mode == "int8" else 0.45)
    assert q["trainable"] == plain["trainable"]  # the same float adapters (and attention biases)
    assert all("int" not in str(v.dtype) for v in model.trainable_variables)
    assert any("lora_kernel" in v.path for v in model.trainable_variables)


@pytest.mark.slow
def test_int8_lora_trains_checkpoints_adapter_only_and_restores(tmp_path, tiny_preset, pydoc_shards, make_tiny_config):
    from kgpt2.config import load_config
    from kgpt2.errors import UserError
    from kgpt2.generate import Generator, Settings
    from kgpt2.model.models import build_causal_lm
    from kgpt2.run import load_model
    from kgpt2.train import train
    from kgpt2.training.checkpoints import CheckpointManager

    cfg = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=q8", "lora.enabled=true", "model.quantize=int8",
                      'train.stages=[4]', "train.max_steps=3", "train.eval_batches=1", "lora.targets=[\"query\", \"value\"]")
    result = train(cfg, verbose=0)
    assert result.global_step == 3 and np.isfinite(result.stages[-1]["loss"])
    ckpt = CheckpointManager(cfg.run_dir).latest()
    with np.load(ckpt.path / "weights.npz") as saved:
        arrays = [saved[k] for k in saved.files]
    # 2 layers x 2 targets x (lora a, lora b, bias) + dropout seed states; no int8 base kernels.
    assert all(a.dtype != np.int8 for a in arrays)
    assert sum(a.size for a in arrays) < 10_000

    restored, tok, run_cfg = load_model(cfg.run_dir)  # rebuilds the preset, quantises, loads adapters
    again, _, _ = load_model(cfg.run_dir)
    fresh = build_causal_lm(run_cfg)  # the untrained quantised base
    ids = tok.encode("The assert statement")
    np.testing.assert_array_equal(_lm_logits(restored, ids), _lm_logits(again, ids))
    assert not np.allclose(_lm_logits(restored, ids), _lm_logits(fresh, ids))
    base_kernels = [v for v in fresh.weights if "int8" in str(v.dtype)]
    assert base_kernels
    for v in base_kernels:  # the same deterministic int8 base under the adapters
        w = next(u for u in restored.weights if u.path == v.path)
        np.testing.assert_array_equal(np.asarray(w), np.asarray(v))
    text = Generator(restored, tok).generate("The assert statement", Settings(sampler="greedy", max_new_tokens=6))
    assert text == Generator(again, tok).generate("The assert statement", Settings(sampler="greedy", max_new_tokens=6))

    with pytest.raises(UserError, match="lora.enabled"):
        train(load_config(None, [f"data.shards={pydoc_shards}", "model.quantize=int8", "lora.enabled=false"]))
    with pytest.raises(UserError, match="model.quantize"):
        build_causal_lm(load_config(None, [f"model.preset={tiny_preset}", "model.quantize=nf4"]))


def test_quantizing_collects_garbage_with_the_heap_frozen_and_frees_the_float_kernels():
    """Keras collects garbage once per deleted float variable; kgpt2 freezes the heap around it (67 s -> 10 s on
    GPT-2 small): each of those collections sees only what quantising made, the float kernels are still freed."""
    import gc
    import weakref

    from kgpt2.config import load_config
    from kgpt2.model.models import build_causal_lm
    from kgpt2.model.quantize import quantize_backbone

    model = build_causal_lm(load_config(None, ["model.preset=scratch", "model.num_layers=2", "model.num_heads=2",
                                               "model.hidden_dim=32", "model.intermediate_dim=64",
                                               "model.vocabulary_size=301", "lora.enabled=false"]))
    dense = model.backbone.transformer_layers[0]._feedforward_intermediate_dense
    float_kernel = weakref.ref(dense._kernel)
    frozen_during = []

    def watch(phase, info):
        if phase == "start":
            frozen_during.append(gc.get_freeze_count())

    was_frozen = gc.get_freeze_count()
    gc.unfreeze()  # conftest freezes each module's heap: start thawed, as a user's process does
    gc.callbacks.append(watch)
    try:
        quantize_backbone(model.backbone, "int8")
    finally:
        gc.callbacks.remove(watch)
    assert len(frozen_during) > 8  # Keras' per-variable collections ran, between kgpt2's one before and one after
    assert min(frozen_during[1:-1]) > 0  # ... each with the heap that was there before quantising frozen
    assert gc.get_freeze_count() == 0  # thawed again: the caller's heap is as it was
    assert float_kernel() is None  # the float kernel was freed
    assert str(dense._kernel.dtype) == "int8"
    if was_frozen:
        gc.freeze()
