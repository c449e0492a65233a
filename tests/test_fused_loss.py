"""The chunked cross-entropy (train.loss_chunk) and train.remat against the plain path.

Oracles: the plain Keras loss/metric on full logits (what kgpt2 trains with
otherwise) and a NumPy cross-entropy written here; gradients through Keras'
own JAX train step (`compute_loss_and_updates`, the function it differentiates).
"""

import numpy as np
import pytest

pytestmark = [pytest.mark.backend, pytest.mark.filterwarnings("ignore::UserWarning")]


def _tiny_lm(vocabulary=301, pad_to=64, seed=0, remat=False):
    import keras
    import keras_hub

    from kgpt2.model.models import pad_vocabulary, use_remat

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=vocabulary, num_layers=2, num_heads=2, hidden_dim=32,
                                             intermediate_dim=64, max_sequence_length=32, dropout=0.0)
    backbone = pad_vocabulary(backbone, pad_to)
    if remat:
        use_remat(backbone)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def _batch(vocabulary=301, batch=3, length=16, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocabulary, (batch, length + 1)).astype("int32")
    weights = (rng.random((batch, length)) > 0.3).astype("float32")  # a loss mask with holes
    weights[0, -5:] = 0.0  # right padding
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((batch, length), bool)}
    return x, ids[:, 1:], weights


def _loss_and_grads(model, x, y, w):
    import jax

    def f(trainable):
        loss, aux = model.compute_loss_and_updates(
            trainable, [v.value for v in model.non_trainable_variables],
            [v.value for v in model.metrics_variables], x, y, w, training=True,
            optimizer_variables=[v.value for v in model.optimizer.variables])
        return loss, aux

    (loss, _), grads = jax.value_and_grad(f, has_aux=True)([v.value for v in model.trainable_variables])
    return float(loss), [np.asarray(g) for g in grads]


def _assert_same_loss_and_grads(plain, other, x, y, w) -> list:
    """`other` computes `plain`'s training loss and gradients on one batch; returns its gradients."""
    loss_p, grads_p = _loss_and_grads(plain, x, y, w)
    loss_o, grads_o = _loss_and_grads(other, x, y, w)
    assert loss_o == pytest.approx(loss_p, rel=1e-6)
    for go, gp in zip(grads_o, grads_p):
        np.testing.assert_allclose(go, gp, rtol=1e-4, atol=1e-6)
    return grads_o


@pytest.mark.parametrize("chunk", [4, 5, 16])  # 5: not a divisor of 16, falls back to 4
def test_chunked_loss_equals_plain_loss_and_gradients(chunk):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("the chunked loss is a JAX training step")
    from kgpt2.training.metrics import compile_lm

    x, y, w = _batch()
    plain, chunked = _tiny_lm(), _tiny_lm()
    chunked.set_weights(plain.get_weights())
    compile_lm(plain, keras.optimizers.SGD(0.1), token_loss=False)
    compile_lm(chunked, keras.optimizers.SGD(0.1), token_loss=False, loss_chunk=chunk)
    for m in (plain, chunked):
        m.optimizer.build(m.trainable_variables)
    assert chunked.compute_loss_and_updates.__func__ is not plain.compute_loss_and_updates.__func__

    loss_p, grads_p = _loss_and_grads(plain, x, y, w)
    loss_c, grads_c = _loss_and_grads(chunked, x, y, w)
    # Independent oracle: NumPy cross-entropy over the real vocabulary on the model's logits.
    logits = np.asarray(plain.predict(x, verbose=0), "float64")[..., :301]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
    assert loss_c == pytest.approx((nll * w).sum() / w.sum(), rel=1e-5)
    assert loss_c == pytest.approx(loss_p, rel=1e-6)
    assert len(grads_c) == len(grads_p)
    for gc, gp in zip(grads_c, grads_p):
        np.testing.assert_allclose(gc, gp, rtol=1e-4, atol=1e-6)
    # The padded vocabulary's rows never get a gradient.
    emb = [i for i, v in enumerate(plain.trainable_variables) if v.shape[0] == 320][0]
    assert np.all(grads_c[emb][301:] == 0)


def test_chunked_training_step_matches_plain_fit():
    """One `fit` step: same weights after, same loss and accuracy logs (accuracy checked by NumPy too)."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("the chunked loss is a JAX training step")
    from kgpt2.training.metrics import compile_lm

    x, y, w = _batch(batch=4)
    plain, chunked = _tiny_lm(seed=3), _tiny_lm(seed=4)
    chunked.set_weights(plain.get_weights())
    logits = np.asarray(plain.predict(x, verbose=0))
    accuracy = ((logits.argmax(-1) == y) * w).sum() / w.sum()
    compile_lm(plain, keras.optimizers.SGD(0.1), token_loss=False)
    compile_lm(chunked, keras.optimizers.SGD(0.1), token_loss=False, loss_chunk=8)
    logs_p = plain.train_on_batch(x, y, w, return_dict=True)
    logs_c = chunked.train_on_batch(x, y, w, return_dict=True)
    assert logs_c["loss"] == pytest.approx(logs_p["loss"], rel=1e-6)
    assert logs_c["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert logs_p["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    for a, b in zip(plain.get_weights(), chunked.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # Evaluation keeps the plain path (and the same numbers).
    ev_p = plain.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    ev_c = chunked.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    assert ev_c["loss"] == pytest.approx(ev_p["loss"], rel=1e-6)


def test_remat_blocks_give_identical_logits_and_gradients():
    keras = pytest.importorskip("keras")
    from kgpt2.training.metrics import compile_lm

    x, y, w = _batch()
    plain, remat = _tiny_lm(seed=5), _tiny_lm(seed=6, remat=True)
    remat.set_weights(plain.get_weights())
    on_jax = keras.backend.backend() == "jax"  # elsewhere train.remat is a logged no-op
    assert all(getattr(layer, "kgpt2_remat", False) == on_jax for layer in remat.backbone.transformer_layers)
    np.testing.assert_array_equal(np.asarray(plain.predict(x, verbose=0)), np.asarray(remat.predict(x, verbose=0)))
    if keras.backend.backend() != "jax":
        return
    for m in (plain, remat):
        compile_lm(m, keras.optimizers.SGD(0.1), token_loss=False)
        m.optimizer.build(m.trainable_variables)
    loss_p, grads_p = _loss_and_grads(plain, x, y, w)
    loss_r, grads_r = _loss_and_grads(remat, x, y, w)
    assert loss_r == loss_p
    for gr, gp in zip(grads_r, grads_p):
        np.testing.assert_allclose(gr, gp, rtol=1e-5, atol=1e-7)


def test_memory_proposal_keeps_the_optimizer_batch(monkeypatch):
    """The warning's batch x accumulation is the batch asked for, and fits by the same estimate."""
    from kgpt2.model import memory

    args = (124_475_904, "full", 64, 1024, 12, 768, 50304)
    warning = memory.check_fits(*args, available=16e9, accumulation=2)
    per_step, steps = memory.propose_batch(64, 2, 64)
    import re

    b, a = map(int, re.search(r"batch_size=(\d+) with train.gradient_accumulation_steps=(\d+)", warning).groups())
    assert b * a == 64 * 2 and 64 % b == 0
    # steps are batches: the same run needs max_steps and warmup a / 2 times longer, and the warning says so
    assert f"by {a // 2} where you set them" in warning and "train.max_steps" in warning
    assert memory.estimate_training_bytes(124_475_904, "full", b, 1024, 12, 768, 50304) <= 16e9
    assert memory.estimate_training_bytes(124_475_904, "full", 2 * b, 1024, 12, 768, 50304) > 16e9 or 64 % (2 * b)
    assert (per_step, steps) == (64, 2)
    assert memory.propose_batch(12, 1, 5) == (4, 3)  # 5 does not divide 12: the largest divisor below


def test_tensorflow_reads_the_gpu_total_from_nvidia_smi(monkeypatch, tmp_path):
    """TensorFlow has no device total; kgpt2 asks nvidia-smi for the first visible GPU (a fake one here)."""
    from kgpt2.model import memory

    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\n[ "$3" = "-i" ] && [ "$4" = "3" ] && echo 15360 && exit 0\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert memory._nvidia_smi_total_bytes() == 15360 * 2**20
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert memory._nvidia_smi_total_bytes() is None  # the tool fails: no number, no warning


DATA_PARALLEL_CHILD = r"""
import contextlib, json, sys
sys.path.insert(0, sys.argv[1])
import keras, numpy as np
from test_fused_loss import _batch, _tiny_lm
from kgpt2.training.distribution import plan_data_parallel
from kgpt2.training.metrics import compile_lm

x, y, w = _batch(batch=12)
start, out = None, {}
for n in (1, 3, 4):  # 3: a device count that is not a power of two
    plan = plan_data_parallel(str(n), 12, "cpu")
    with plan.scope() if plan else contextlib.nullcontext():
        model = _tiny_lm(seed=7, remat=True)
        start = start or model.get_weights()
        model.set_weights(start)
        compile_lm(model, keras.optimizers.SGD(0.1), token_loss=False, loss_chunk=8)
        logs = model.train_on_batch(x, y, w, return_dict=True)
    out[n] = {"plan": plan.describe() if plan else "", "loss": float(logs["loss"]), "accuracy": float(logs["accuracy"]),
              "weights": [float(np.asarray(v).sum()) for v in model.get_weights()]}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_data_parallel_any_device_count_with_chunked_loss_and_remat():
    """1, 3 and 4 virtual CPU devices (a JAX subprocess): the same step, loss and weights."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = subprocess.run([sys.executable, "-c", DATA_PARALLEL_CHILD, os.path.dirname(__file__)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = {int(k): v for k, v in __import__("json").loads(out.stdout.split("RESULT ", 1)[1]).items()}
    assert r[3]["plan"] == "data parallel on 3 devices (cpu:0, cpu:1, cpu:2): global batch 12 = 4 per device"
    assert r[4]["plan"].startswith("data parallel on 4 devices")
    for n in (3, 4):
        assert r[n]["loss"] == pytest.approx(r[1]["loss"], rel=1e-5)
        assert r[n]["accuracy"] == pytest.approx(r[1]["accuracy"], abs=1e-6)
        np.testing.assert_allclose(r[n]["weights"], r[1]["weights"], rtol=1e-4, atol=1e-4)


def test_config_keys_are_checked():
    from kgpt2.config import load_config
    from kgpt2.errors import UserError
    from kgpt2.train import plan_steps

    cfg = load_config(None, ["train.loss_chunk=128", "train.remat=true"])
    assert (cfg.train.loss_chunk, cfg.train.remat) == (128, True)
    assert (load_config(None).train.loss_chunk, load_config(None).train.remat) == (0, False)  # opt-in
    with pytest.raises(UserError, match="train.remat"):
        load_config(None, ['train.remat="yes"'])
    with pytest.raises(UserError, match="train.loss_chunk must be at least 0"):
        plan_steps(load_config(None, ["train.loss_chunk=-4"]), None, [])


def test_one_timing_method_reads_the_step_log(tmp_path):
    """steady_tokens_per_s times exactly the steps after the warm-up, from the step log's stamps."""
    from kgpt2.training.run_logs import steady_tokens_per_s

    times = {1: 105.0, 2: 106.0, 3: 106.5, 4: 107.0, 5: 107.5}  # step 1 compiled
    rows = [{"step": str(s), "time": str(times[s])} for s in (5, 3, 1, 2, 4)]  # flushed in any order
    # Steps 3..5 after 2 warm-up steps: 3 steps in the 1.5 s after step 2 finished.
    assert steady_tokens_per_s(rows, tokens_per_step=100, skip=2) == pytest.approx(200.0)
    with pytest.raises(ValueError):
        steady_tokens_per_s(rows, tokens_per_step=100, skip=5)
