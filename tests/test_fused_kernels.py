"""kgpt2's Pallas kernels (cross-entropy, layer norm) give what JAX and Keras give, values and gradients.

The kernels run in Pallas' interpreter here (kernel="pallas" off a GPU), the
jnp forms as they run on a CPU. Oracles: `jax.nn.log_softmax` and
`jnp.argmax` for the loss and accuracy, `keras.ops.layer_normalization` for
the layer norm, and Keras' own JAX train step for a whole model.
"""

from unittest import mock

import numpy as np
import pytest
from test_fused_loss import _assert_same_loss_and_grads, _batch, _tiny_lm
from test_speed_levers import _jax_only

pytestmark = [pytest.mark.backend, pytest.mark.filterwarnings("ignore::UserWarning")]


def _jax():
    _jax_only()  # TensorFlow trains with Keras' own ops
    import jax

    return jax


def _oracle_cross_entropy(logits, labels, real):
    import jax
    import jax.numpy as jnp

    log_p = jax.nn.log_softmax(logits[..., :real].astype("float32"), axis=-1)
    loss = -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    return loss, (jnp.argmax(logits[..., :real], axis=-1) == labels).astype("float32")


def _assert_gradients_close(grads, wants, tolerance):
    """Each gradient has its oracle's shape and dtype and is within `tolerance` of the oracle's largest entry."""
    for g, w in zip(grads, wants, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        scale = float(np.abs(np.asarray(w, "float32")).max())
        np.testing.assert_allclose(np.asarray(g, "float32"), np.asarray(w, "float32"), atol=scale * tolerance)


@pytest.mark.parametrize("kernel", ["pallas", "jnp"])
@pytest.mark.parametrize("blocks", [(1, 893, 904), (0, 2043, 2056), (2, 0, 0)])
def test_cross_entropy_matches_log_softmax_values_accuracy_and_gradient(kernel, blocks):
    """`blocks`: (whole kernel blocks, real columns past them, stored columns past them) -- a tail block with
    padding, padding past a whole block (only masked blocks), no tail at all."""
    jax = _jax()
    import jax.numpy as jnp

    from kgpt2.kernels.cross_entropy import BLOCK, token_cross_entropy

    whole, real_tail, stored_tail = blocks
    vocabulary, real = whole * BLOCK + stored_tail, whole * BLOCK + real_tail
    logits = (jax.random.normal(jax.random.PRNGKey(0), (3, 4, vocabulary)) * 4).astype("bfloat16")
    if vocabulary > real:
        logits = logits.at[0, 0, real + 2].set(60.0)  # a pad column above every real logit never counts
    tie = min(BLOCK + 7, real - 1)
    logits = logits.at[1, 1, 7].set(30.0).at[1, 1, tie].set(30.0)  # a tie (across blocks where two): first wins
    best = jnp.argmax(logits[..., :real], axis=-1)
    labels = jnp.where(jnp.arange(4) % 2 == 0, best, (best + 11) % real).at[1, 1].set(7)
    loss, correct = token_cross_entropy(logits, labels, real, kernel)
    want_loss, want_correct = _oracle_cross_entropy(logits, labels, real)
    np.testing.assert_allclose(loss, want_loss, rtol=2e-6, atol=2e-6)
    np.testing.assert_array_equal(correct, want_correct)
    assert float(correct[1, 1]) == 1.0 and float(correct[:, 1::2].sum()) == 1.0

    weights = jax.random.uniform(jax.random.PRNGKey(1), (3, 4))
    grad = jax.grad(lambda z: jnp.sum(token_cross_entropy(z, labels, real, kernel)[0] * weights))(logits)
    want = jax.grad(lambda z: jnp.sum(_oracle_cross_entropy(z, labels, real)[0] * weights))(logits)
    assert grad.dtype == logits.dtype
    np.testing.assert_allclose(np.asarray(grad, "float32"), np.asarray(want, "float32"), atol=1e-2 / 128)
    assert not np.asarray(grad[..., real:], "float32").any()  # the padded columns get no gradient


@pytest.mark.parametrize("kernel", ["pallas", "jnp"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_layer_norm_matches_keras_values_and_gradients(kernel, dtype):
    jax = _jax()
    import jax.numpy as jnp
    import keras

    from kgpt2.kernels.layer_norm import ROWS, layer_norm

    x = (jax.random.normal(jax.random.PRNGKey(0), (3, ROWS + 5, 48)) * 3 + 1.5).astype(dtype)  # rows % ROWS != 0
    gamma, beta = jax.random.normal(jax.random.PRNGKey(1), (48,)), jax.random.normal(jax.random.PRNGKey(2), (48,))
    cotangent = jax.random.normal(jax.random.PRNGKey(3), x.shape)

    def keras_ln(x, gamma, beta):
        return keras.ops.layer_normalization(x, gamma, beta, -1, 1e-5).astype(x.dtype)

    def kgpt2_ln(x, gamma, beta):
        return layer_norm(x, gamma, beta, 1e-5, kernel)

    def weighted(f):
        return lambda *a: jnp.sum(f(*a).astype("float32") * cotangent)

    y, want = kgpt2_ln(x, gamma, beta), keras_ln(x, gamma, beta)
    assert y.dtype == x.dtype
    np.testing.assert_allclose(np.asarray(y, "float32"), np.asarray(want, "float32"),
                               atol=1e-5 if dtype == "float32" else 1e-2)
    grads = jax.grad(weighted(kgpt2_ln), argnums=(0, 1, 2))(x, gamma, beta)
    wants = jax.grad(weighted(keras_ln), argnums=(0, 1, 2))(x, gamma, beta)
    _assert_gradients_close(grads, wants, 1e-5 if dtype == "float32" else 1e-2)


@pytest.mark.parametrize("kernel", ["pallas", "jnp"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_residual_layer_norms_match_an_add_then_keras_layer_norm(kernel, dtype):
    """add_layer_norm and layer_norm_passing_input: outputs and every gradient (through both outputs) as Keras'
    add and layer norm give them; the sum rounded to the inputs' dtype before it is normalised, as Keras adds."""
    jax = _jax()
    import jax.numpy as jnp
    import keras

    from kgpt2.kernels.layer_norm import ROWS, add_layer_norm, layer_norm_passing_input

    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    a = (jax.random.normal(keys[0], (2, ROWS + 3, 48)) * 2).astype(dtype)
    residual = (jax.random.normal(keys[1], a.shape) + 1).astype(dtype)
    gamma, beta = jax.random.normal(keys[2], (48,)), jax.random.normal(keys[3], (48,))
    c1, c2 = jax.random.normal(keys[4], a.shape), jax.random.normal(keys[5], a.shape)

    def keras_ln(x, g):
        return keras.ops.layer_normalization(x, g, beta, -1, 1e-5).astype(x.dtype)

    def weighted(*outputs):
        return sum(jnp.sum(o.astype("float32") * c) for o, c in zip(outputs, (c1, c2, c2, c1)))

    def kgpt2_blocks(a, residual, gamma):
        s, y = add_layer_norm(a, residual, gamma, beta, 1e-5, kernel)
        return weighted(s, y, *layer_norm_passing_input(s, gamma * 0.5, beta, 1e-5, kernel))

    def keras_blocks(a, residual, gamma):
        s = a + residual
        return weighted(s, keras_ln(s, gamma), s, keras_ln(s, gamma * 0.5))

    s, y = add_layer_norm(a, residual, gamma, beta, 1e-5, kernel)
    np.testing.assert_array_equal(s, a + residual)
    np.testing.assert_allclose(np.asarray(y, "float32"), np.asarray(keras_ln(a + residual, gamma), "float32"),
                               atol=1e-5 if dtype == "float32" else 1e-2)
    grads = jax.grad(kgpt2_blocks, argnums=(0, 1, 2))(a, residual, gamma)
    wants = jax.grad(keras_blocks, argnums=(0, 1, 2))(a, residual, gamma)
    _assert_gradients_close(grads, wants, 1e-5 if dtype == "float32" else 1e-2)


@pytest.mark.parametrize("kernel", ["pallas", "jnp"])
@pytest.mark.parametrize("dtype, bias_dtype", [("bfloat16",) * 2, ("float32",) * 2, ("bfloat16", "float32")])
def test_qkv_projection_matches_three_einsum_dense_products(kernel, dtype, bias_dtype):
    """Outputs exactly as Keras' EinsumDense computes them in bfloat16, gradients within rounding, bias
    gradients summed in float32 (rows past a kernel program's tile included) and given in the biases' dtype."""
    jax = _jax()
    import jax.numpy as jnp

    from kgpt2.kernels.qkv_projection import ROWS, STEPS, qkv_projection

    keys = jax.random.split(jax.random.PRNGKey(0), 10)
    x = jax.random.normal(keys[0], (2, ROWS * STEPS + 5, 24)).astype(dtype)
    kernels = [(jax.random.normal(keys[1 + i], (24, 2, 6)) * 0.3).astype(dtype) for i in range(3)]
    biases = [jax.random.normal(keys[4 + i], (2, 6)).astype(bias_dtype) for i in range(3)]
    cotangents = [jax.random.normal(keys[7 + i], x.shape[:2] + (2, 6)) for i in range(3)]

    def keras_qkv(x, ws, bs):
        return [jnp.einsum("abc,cde->abde", x, w) + b for w, b in zip(ws, bs)]

    def kgpt2_qkv(x, ws, bs):
        return qkv_projection(x, ws[0], bs[0], ws[1], bs[1], ws[2], bs[2], kernel)

    def weighted(project):
        return lambda x, ws, bs: sum(jnp.sum(o.astype("float32") * c) for o, c in zip(project(x, ws, bs), cotangents))

    for mine, want in zip(kgpt2_qkv(x, kernels, biases), keras_qkv(x, kernels, biases)):
        assert mine.shape == want.shape and mine.dtype == want.dtype
        np.testing.assert_allclose(np.asarray(mine, "float32"), np.asarray(want, "float32"), rtol=1e-5, atol=1e-5)
    grads = jax.tree.leaves(jax.grad(weighted(kgpt2_qkv), argnums=(0, 1, 2))(x, kernels, biases))
    wants = jax.tree.leaves(jax.grad(weighted(keras_qkv), argnums=(0, 1, 2))(x, kernels, biases))
    _assert_gradients_close(grads, wants, 1e-5 if dtype == "float32" else 2e-2)


# train.remat recomputes the blocks, kernels included; blocks: kgpt2.kernels.fused_block's call (residual adds inside
# the norms, q/k/v projected together), with the jnp forms or the Pallas kernels (interpreted here)
@pytest.mark.parametrize("remat, blocks", [(False, None), (True, None), (False, "jnp"), (True, "pallas")])
def test_fused_layer_norm_in_a_model_keeps_loss_gradients_and_variables(remat, blocks):
    _jax()
    import keras

    from kgpt2.kernels.fused_block import use_fused_blocks
    from kgpt2.kernels.layer_norm import use_fused_layer_norm
    from kgpt2.training.metrics import compile_lm

    plain, fused = _tiny_lm(seed=0), _tiny_lm(seed=1, remat=remat)
    fused.set_weights(plain.get_weights())
    names = [v.path for v in fused.weights]
    assert use_fused_layer_norm(fused, blocks or "auto") == 2 * 2 + 1  # two per block, two blocks, the final one
    if blocks:
        assert len(use_fused_blocks(fused, blocks)) == 2
    assert [v.path for v in fused.weights] == names
    for m in (plain, fused):
        compile_lm(m, keras.optimizers.SGD(0.1), token_loss=False)
        m.optimizer.build(m.trainable_variables)
    x, y, w = _batch()
    import kgpt2.kernels.fused_block as fused_block

    with mock.patch.object(fused_block, "qkv_projection", wraps=fused_block.qkv_projection) as qkv, \
            mock.patch.object(fused_block, "add_layer_norm", wraps=fused_block.add_layer_norm) as add_norm:
        _assert_same_loss_and_grads(plain, fused, x, y, w)
    assert (qkv.call_count > 0, add_norm.call_count > 0) == (bool(blocks), bool(blocks))  # the path it tests ran
    for _ in range(2):
        a, b = plain.train_on_batch(x, y, w, return_dict=True), fused.train_on_batch(x, y, w, return_dict=True)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    np.testing.assert_allclose(fused.predict(x, verbose=0), plain.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_auto_turns_the_kernels_on_only_for_a_jax_gpu_without_a_distribution():
    _jax()
    import keras

    from kgpt2.config import load_config
    from kgpt2.errors import UserError
    from kgpt2.training.devices import Device
    from kgpt2.training.metrics import wants_fused_kernel

    train = load_config(None).train
    assert (train.fused_loss, train.fused_layer_norm) == ("auto", "auto")
    assert load_config(None, ["train.fused_layer_norm=false"]).train.fused_layer_norm is False
    with pytest.raises(UserError, match="train.fused_layer_norm must be one of"):
        load_config(None, ['train.fused_layer_norm="on"'])
    cpu, gpu, t4 = Device("cpu:0", "CPU", False), Device("gpu:0", "H200", True), Device("gpu:0", "Tesla T4", False)
    assert not wants_fused_kernel("auto", cpu) and wants_fused_kernel(True, cpu)
    assert not wants_fused_kernel("auto", t4)  # XLA compiles Pallas' Triton kernels for Ampere and newer only
    assert (cpu.runs_triton, t4.runs_triton, gpu.runs_triton) == (False, False, True)
    from kgpt2.training.devices import kernel_form

    assert kernel_form() == "jnp"  # the kernels' own "auto" on this (CPU) machine
    assert wants_fused_kernel("auto", gpu) and not wants_fused_kernel(False, gpu)
    assert not wants_fused_kernel("auto", gpu, auto_too=False) and wants_fused_kernel(True, gpu, auto_too=False)
    with keras.distribution.DataParallel(devices=keras.distribution.list_devices("cpu")[:1]).scope():
        assert not wants_fused_kernel("auto", gpu) and wants_fused_kernel(True, gpu)


@pytest.mark.parametrize("device", [("cpu:0", "CPU", False), ("gpu:0", "Tesla T4", False)])
def test_kgpt2_train_compiles_with_the_fused_kernels_when_asked(device):
    """Asked for (true) where Pallas' Triton kernels cannot run: the jnp forms, the same step."""
    _jax()
    import keras

    from kgpt2.config import load_config
    from kgpt2.training.devices import Device
    from kgpt2.training.metrics import compile_for_training

    cfg = load_config(None, ["train.fused_loss=true", "train.fused_layer_norm=true"])
    model = _tiny_lm()
    # a T4 only in name: no XLA GPU options
    with mock.patch("kgpt2.training.metrics.step_compiler_options", return_value={}):
        compile_for_training(model, cfg, keras.optimizers.SGD(0.1), Device(*device), 32)
    norms = [l for l in model._flatten_layers() if isinstance(l, keras.layers.LayerNormalization)]
    assert norms and all("call" in vars(l) for l in norms)
    assert all(getattr(block, "kgpt2_fused_block", False) for block in model.backbone.transformer_layers)
    assert getattr(model, "_kgpt2_loss_chunk", None) == 0  # the one-piece loss
    assert model._kgpt2_loss_kernel == "jnp"  # the step's device decides, not the first device JAX lists
    x, y, w = _batch()
    assert np.isfinite(model.train_on_batch(x, y, w, return_dict=True)["loss"])


def test_the_kernels_lower_to_triton_for_a_gpu_on_this_machine():
    """The GPU path, short of a GPU: Pallas lowers every kernel (loss forward and gradient, layer norm both ways
    alone and with a residual, the q/k/v gradients) to Triton IR for CUDA here, so an operation Pallas' Triton
    backend cannot lower fails on the CPU, not on a user's GPU (the interpreter, which the tests above use,
    accepts more than Triton does)."""
    jax = _jax()
    import re

    import jax.numpy as jnp

    import kgpt2.training.devices
    from kgpt2.kernels.cross_entropy import BLOCK, token_cross_entropy
    from kgpt2.kernels.layer_norm import add_layer_norm, layer_norm, layer_norm_passing_input
    from kgpt2.kernels.qkv_projection import qkv_projection

    def total(*arrays):
        return sum(jnp.sum(a.astype("float32")) for a in arrays)

    def norms(x, g, b):
        s, y = add_layer_norm(x, x * 2, g, b, 1e-5, "pallas")
        return total(layer_norm(x, g, b, 1e-5, "pallas"), s, y, *layer_norm_passing_input(y, g, b, 1e-5, "pallas"))

    def step(logits, labels, x, gamma, beta, w, bias):
        loss = lambda z: jnp.sum(token_cross_entropy(z, labels, BLOCK + 5, "pallas")[0])  # noqa: E731
        qkv = lambda x, w, b: total(*qkv_projection(x, w, b, w, b, w, b, "pallas"))  # noqa: E731
        return (jax.grad(loss)(logits), jax.grad(norms, argnums=(0, 1, 2))(x, gamma, beta),
                jax.grad(qkv, argnums=(0, 1, 2))(x, w, bias))

    shapes = [jax.ShapeDtypeStruct(s, d) for s, d in [
        ((2, 8, BLOCK + 8), "bfloat16"), ((2, 8), "int32"), ((2, 8, 48), "bfloat16"), ((48,), "float32"),
        ((48,), "float32"), ((48, 2, 24), "bfloat16"), ((2, 24), "bfloat16")]]
    with mock.patch.object(kgpt2.training.devices, "pallas_interprets", lambda: False):  # every kernel's launch
        text = jax.jit(step).trace(*shapes).lower(lowering_platforms=("cuda",)).as_text()
    names = re.findall(r'name = "(kgpt2_\w+)"', text)
    assert text.count("__gpu$xla.gpu.triton") == len(names) == 2 + 3 * 2 + 1
    assert set(names) == {"kgpt2_cross_entropy", "kgpt2_cross_entropy_grad", "kgpt2_layer_norm",
                          "kgpt2_layer_norm_grad", "kgpt2_qkv_grad"}
