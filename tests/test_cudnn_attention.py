"""`train.attention_dropout_kernel = "cudnn"`: which calls reach cuDNN's fused attention, with what.

cuDNN's kernel runs on a GPU only, so on this machine JAX's private entry
point is replaced by a recorder that answers with the plain causal
attention (jax.nn.dot_product_attention, no dropout): the tests check the
routing (training with dropout: cuDNN; evaluation, decoding, packed
windows, float32: Keras' path), the arguments (causal mask, the layer's
rate and scale, BTNH, a distinct seed per layer) and that the model's
output is the attention the recorder returned. The GPU run that checks
the kernel itself (masks change per step, the Shakespeare validation loss)
is benchmarks/gpu_session.sh shake6 (docs/benchmarks.md).
"""

import keras
import numpy as np
import pytest
from test_performance_options import SHAPE, _batch

import kgpt2  # noqa: F401  (picks the Keras backend)
from kgpt2.config import load_config
from kgpt2.errors import UserError
from kgpt2.kernels import cudnn_attention
from kgpt2.model.models import KEEP_ATTENTION_MASK, build_causal_lm

pytestmark = [pytest.mark.backend, pytest.mark.filterwarnings("ignore::UserWarning")]


def _build(kernel: str, policy="mixed_bfloat16"):
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        return build_causal_lm(load_config(None, SHAPE + ["model.dropout=0.2",
                                                          f"train.attention_dropout_kernel={kernel}"]))
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.fixture
def recorder(monkeypatch):
    if keras.backend.backend() != "jax":
        pytest.skip("cuDNN's attention is JAX's")
    import jax
    from jax._src.cudnn import fused_attention_stablehlo

    calls = []

    def fake(query, key, value, *, scale, mask_type, dropout_rate, seed, qkv_layout):
        calls.append(dict(shape=query.shape, scale=scale, mask_type=mask_type, rate=dropout_rate, seed=seed,
                          layout=qkv_layout))
        return jax.nn.dot_product_attention(query, key, value, scale=scale, is_causal=True)

    monkeypatch.setattr(fused_attention_stablehlo, "dot_product_attention", fake)
    monkeypatch.setattr(cudnn_attention, "cudnn_available", lambda: True)
    return calls


def test_training_with_dropout_goes_to_the_causal_cudnn_kernel(recorder):
    from jax._src.cudnn.fused_attention_stablehlo import MaskType

    model = _build("cudnn")
    x, _ = _batch()
    model(x, training=True)
    assert len(recorder) == 2  # one call per layer
    assert {c["mask_type"] for c in recorder} == {MaskType.CAUSAL}
    assert {c["rate"] for c in recorder} == {0.2} and {c["layout"] for c in recorder} == {"BTNH"}
    assert len({c["seed"] for c in recorder}) == 2  # the layers draw different masks
    assert recorder[0]["scale"] == pytest.approx(1 / np.sqrt(16))  # hidden 32 / 2 heads
    assert recorder[0]["shape"] == (2, 16, 2, 16)


def test_evaluation_packed_windows_and_float32_keep_keras_path(recorder):
    model = _build("cudnn")
    x, _ = _batch()
    model(x, training=False)
    assert recorder == []
    token = KEEP_ATTENTION_MASK.set(True)
    try:
        model(x, training=True)
    finally:
        KEEP_ATTENTION_MASK.reset(token)
    assert recorder == []
    _build("cudnn", policy="float32")(x, training=True)  # cuDNN's kernel takes 16-bit inputs only
    assert recorder == []
    with keras.device("cpu:0"):  # train.device = "cpu" on a GPU machine: the model runs on the CPU
        model(x, training=True)
    assert recorder == []
    model(x, training=True)  # ... and on the GPU again once out of that scope
    assert len(recorder) == 2


def test_the_kernel_output_is_the_attention_the_model_uses(recorder):
    """With the recorder's dropout-free answer, training-mode logits match Keras' causal path with dropout off."""
    x, _ = _batch()
    fused = _build("cudnn")
    plain = _build("xla")
    for layer in (fused, plain):
        for block in layer.backbone.transformer_layers:  # only the attention probabilities keep dropout
            block._self_attention_dropout.rate = 0.0
            block._feedforward_dropout.rate = 0.0
    a = np.asarray(fused(x, training=True), "float32")
    from kgpt2 import compat
    for attention in compat.self_attention_layers(plain.backbone):
        compat.set_attention_dropout(attention, 0.0)
    b = np.asarray(plain(x, training=True), "float32")
    assert len(recorder) == 2
    np.testing.assert_allclose(a, b, atol=0.05)  # bf16 compute
    assert np.abs(a).max() > 0.1


def test_off_a_gpu_it_warns_and_keeps_keras_dropout(caplog):
    model = _build("cudnn")  # this machine has no GPU (CI neither)
    assert "needs the JAX backend on a GPU" in caplog.text
    x, _ = _batch()
    a, b = np.asarray(model(x, training=True), "float32"), np.asarray(model(x, training=True), "float32")
    assert np.abs(a - b).max() > 1e-3  # dropout still on


def test_auto_uses_cudnn_where_it_runs(recorder):
    model = _build("auto")
    x, _ = _batch()
    model(x, training=True)
    assert len(recorder) == 2


def test_auto_off_a_gpu_is_keras_dropout_without_a_warning(caplog):
    model = _build("auto")  # no GPU here: Keras' path, and the recipe's CPU users see no warning
    assert "attention_dropout_kernel" not in caplog.text
    x, _ = _batch()
    a, b = np.asarray(model(x, training=True), "float32"), np.asarray(model(x, training=True), "float32")
    assert np.abs(a - b).max() > 1e-3  # dropout still on


def test_the_shakespeare_recipe_asks_for_cudnn_where_it_runs():
    assert load_config("shakespeare_char", []).train.attention_dropout_kernel == "auto"


def test_a_wrong_value_is_one_sentence():
    with pytest.raises(UserError, match="attention_dropout_kernel"):
        load_config(None, ["train.attention_dropout_kernel=flash"])
