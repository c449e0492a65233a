"""Performance options change speed, never results: vocabulary padding and the memory warning."""

import logging

import keras
import numpy as np
import pytest

import kgpt2  # noqa: F401  (picks the Keras backend)
from kgpt2.config import load_config
from kgpt2.errors import UserError
from kgpt2.model.memory import check_fits, estimate_training_bytes
from kgpt2.model.models import build_backbone, build_causal_lm, padded_size, save_unpadded_weights
from kgpt2.training.metrics import lm_loss

pytestmark = pytest.mark.backend

SHAPE = ["model.preset=scratch", "model.num_layers=2", "model.num_heads=2", "model.hidden_dim=32",
         "model.intermediate_dim=64", "model.max_sequence_length=32", "model.vocabulary_size=301",
         "lora.enabled=false"]


def _models():
    keras.utils.set_random_seed(0)
    plain = build_causal_lm(load_config(None, SHAPE + ["model.pad_vocabulary_to=0"]))
    keras.utils.set_random_seed(0)
    padded = build_causal_lm(load_config(None, SHAPE))  # default: pad to a multiple of 64
    return plain, padded


def _batch(seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 301, (2, 17)).astype("int32")
    return {"token_ids": ids[:, :-1], "padding_mask": np.ones((2, 16), bool)}, ids[:, 1:]


def test_padded_vocabulary_gives_the_same_logits_and_loss():
    plain, padded = _models()
    assert plain.backbone.vocabulary_size == 301 and padded.backbone.vocabulary_size == 320
    x, y = _batch()
    a, b = np.asarray(plain(x)), np.asarray(padded(x))
    np.testing.assert_allclose(b[..., :301], a, atol=1e-6)
    assert b[..., 301:].max() <= -1e8  # pad ids can never be predicted
    loss = lm_loss()
    assert float(loss(y, b)) == pytest.approx(float(loss(y, a)), abs=1e-6)


@pytest.mark.slow  # about 20 s: two generate() compiles
def test_padded_vocabulary_gives_the_same_greedy_generation():
    plain, padded = _models()
    prompt = np.zeros((1, 16), "int32")
    prompt[0, :4] = [5, 17, 42, 7]
    mask = np.zeros((1, 16), bool)
    mask[0, :4] = True
    outs = []
    for model in (plain, padded):
        model.compile(sampler="greedy")
        outs.append(np.asarray(model.generate({"token_ids": prompt, "padding_mask": mask}, max_length=16,
                                                  stop_token_ids=None)["token_ids"]))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert outs[1].max() < 301


def _causal_pair():
    models = []
    for causal in ("false", "true"):
        keras.utils.set_random_seed(0)
        models.append(build_causal_lm(load_config(None, SHAPE + [f"model.causal_attention={causal}"])))
    return models


def test_causal_attention_kernel_gives_the_same_logits_for_real_tokens():
    masked, causal = _causal_pair()
    x, _ = _batch(3)
    x["padding_mask"][1, 10:] = False  # right padding, as kgpt2's batches have
    a, b = np.asarray(masked(x)), np.asarray(causal(x))
    np.testing.assert_allclose(b[0], a[0], atol=1e-5)
    np.testing.assert_allclose(b[1, :10], a[1, :10], atol=1e-5)
    # The padded positions did change: the causal kernel ran without keras-hub's mask.
    assert np.abs(b[1, 10:] - a[1, 10:]).max() > 1e-4


def test_attention_dropout_alone_trains(tmp_path):
    """model.attention_dropout > 0 with model.dropout = 0: keras-hub made the attention's Dropout without
    a seed generator, which kgpt2 adds; it is saved and restored with the checkpoint's other RNG states."""
    from kgpt2.training.checkpoint_arrays import checkpoint_variables, load_arrays, save_arrays

    keras.utils.set_random_seed(0)
    model = build_causal_lm(load_config(None, SHAPE + ["model.attention_dropout=0.5"]))
    x, y = _batch()
    a, b = np.asarray(model(x, training=True)), np.asarray(model(x, training=True))
    assert np.abs(a - b).max() > 1e-4  # dropped differently each call
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(model(x)))  # and not at inference
    model.compile(optimizer="sgd", loss=lm_loss())
    assert np.isfinite(model.fit(x, y, verbose=0).history["loss"][0])
    seeds = [v for v in checkpoint_variables(model) if "seed_generator" in v.path]
    assert len(seeds) == 2  # one per layer's attention
    save_arrays(tmp_path / "model.npz", checkpoint_variables(model))
    load_arrays(tmp_path / "model.npz", checkpoint_variables(model), "model")


@pytest.mark.slow  # about 20 s: two generate() compiles
def test_causal_attention_kernel_gives_the_same_greedy_generation():
    outs = []
    prompt = np.zeros((1, 16), "int32")
    prompt[0, :4] = [5, 17, 42, 7]
    mask = np.zeros((1, 16), bool)
    mask[0, :4] = True
    for model in _causal_pair():
        model.compile(sampler="greedy")
        outs.append(np.asarray(model.generate({"token_ids": prompt, "padding_mask": mask}, max_length=16,
                                              stop_token_ids=None)["token_ids"]))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_training_without_token_loss_still_validates_with_it():
    from kgpt2.training.metrics import compile_lm, evaluation_model

    keras.utils.set_random_seed(0)
    model = compile_lm(build_causal_lm(load_config(None, SHAPE)), "adam", token_loss=False)
    x, y = _batch(4)
    history = model.fit(x, y, sample_weight=np.ones(y.shape, "float32"), epochs=2, verbose=0)
    assert set(history.history) == {"loss", "accuracy"}  # no second cross-entropy while training
    twin = evaluation_model(model)
    assert twin.backbone is model.backbone
    logs = twin.evaluate(x, y, sample_weight=np.ones(y.shape, "float32"), verbose=0, return_dict=True)
    assert 0 <= logs["accuracy"] <= 1
    trained = model.evaluate(x, y, sample_weight=np.ones(y.shape, "float32"), verbose=0, return_dict=True)
    assert logs["token_loss"] == pytest.approx(trained["loss"], rel=1e-5)  # the trained weights, shared


def test_exported_weights_have_the_original_vocabulary(tmp_path):
    import h5py

    plain, padded = _models()
    path = tmp_path / "stage.weights.h5"
    save_unpadded_weights(padded.backbone, path)
    shapes = []
    with h5py.File(path) as f:
        f.visititems(lambda n, o: shapes.append(o.shape) if isinstance(o, h5py.Dataset) else None)
    assert (301, 32) in shapes and not any(s and s[0] == 320 for s in shapes)
    fresh = build_backbone(load_config(None, SHAPE).model)  # a plain keras-hub GPT2Backbone
    fresh.load_weights(str(path))
    x, _ = _batch(2)
    np.testing.assert_allclose(np.asarray(fresh(x)), np.asarray(plain.backbone(x)), atol=1e-6)


def test_padding_option_values():
    assert padded_size(50257, 64) == 50304
    assert padded_size(50257, 0) == 50257 and padded_size(50304, 64) == 50304
    with pytest.raises(UserError, match="pad_vocabulary_to"):
        padded_size(50257, -8)


def test_memory_estimate_matches_the_h100_measurement():
    # docs/benchmarks.md: GPT-2 124M full fine-tune, batch 16 x 1,024, peak 11.22 GB on an H100.
    est = estimate_training_bytes(124_475_904, "full", 16, 1024, 12, 768, 50304)
    assert 11.22e9 * 0.95 < est < 11.22e9 * 1.15
    assert estimate_training_bytes(124_475_904, "lora", 16, 1024, 12, 768, 50304) < est


def test_memory_warning_says_what_fits():
    args = (124_475_904, "full", 64, 1024, 12, 768, 50304)
    assert check_fits(*args, available=None) is None  # CPU / unknown: no warning
    assert check_fits(*args, available=80e9) is None
    warning = check_fits(*args, available=16e9)
    assert "16.0 GB" in warning and "train.batch_size=" in warning and "gradient_accumulation_steps" in warning
    assert "use LoRA" in check_fits(1_500_000_000, "full", 8, 1024, 48, 1600, 50304, available=16e9)


def test_trainer_warns_before_compiling(monkeypatch, caplog):
    import kgpt2.model.memory
    from kgpt2.training.model_summary import warn_if_too_big

    cfg = load_config(None, SHAPE + ["train.batch_size=4096", "data.sequence_length=32"])
    model = build_causal_lm(cfg)
    monkeypatch.setattr(kgpt2.model.memory, "device_memory_bytes", lambda: 1e6)
    with caplog.at_level(logging.WARNING, logger="kgpt2"):
        warn_if_too_big(cfg, model, on_gpu=True)
    assert "GB of GPU memory" in caplog.text and "device offers 0.0 GB" in caplog.text
    # On a CPU the RAM is what runs out (Colab's kernel dies without a word): the machine's free memory.
    caplog.clear()
    monkeypatch.setattr(kgpt2.model.memory, "host_available_bytes", lambda: 2e6)
    with caplog.at_level(logging.WARNING, logger="kgpt2"):
        warn_if_too_big(cfg, model, on_gpu=False)
    assert "GB of memory for training" in caplog.text and "the machine has 0.0 GB free" in caplog.text
    assert "train.batch_size=" in caplog.text  # ... and what would fit


def test_host_available_bytes_reads_this_machines_free_ram():
    import os

    from kgpt2.model.memory import host_available_bytes

    free = host_available_bytes()
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert free is not None and 0 < free <= total
