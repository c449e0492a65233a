"""Layer normalisation in one pass forward and one pass backward (train.fused_layer_norm, JAX).

Keras' LayerNormalization compiles, in a GPT-2 training step on an H200, to
three kernels forward (two reductions for the statistics, one to normalise)
and, backward, a kernel for the input's gradient at ~2 TB/s plus two
reductions for gamma's and beta's: ~3 ms of a 32 ms step for the 25 layer
norms of GPT-2 124M (docs/benchmarks.md "Training speed, round 8"). No Keras,
keras-hub or JAX layer norm is faster there (`xla_gpu_enable_cudnn_layer_norm`
measured +0.4%), so kgpt2 writes this one: on a GPU, Pallas (Triton) kernels
that each take `ROWS` rows whole; the forward reads x once and writes y and
the row statistics; the backward reads x and dy once and writes dx and each
block's partial sums for gamma and beta (summed by XLA, a [blocks, 2, width]
array). Elsewhere the same math in jnp (tests; kernel="pallas" runs the
kernels in Pallas' interpreter). Statistics and arithmetic are float32, as
Keras' are; y and dx come out in x's dtype.

    >>> import jax.numpy as jnp
    >>> from kgpt2.kernels.layer_norm import layer_norm
    >>> y = layer_norm(jnp.array([[1.0, 2.0, 3.0]]), jnp.ones(3), jnp.zeros(3), 1e-5)
    >>> [round(float(v), 3) for v in y[0]]
    [-1.225, 0.0, 1.225]
"""

from __future__ import annotations

import functools
import types

from kgpt2.compat import sublayers
from kgpt2.training.devices import kernel_form, pallas_call, pallas_modules

ROWS = 8  # rows a kernel program normalises at once
# The kernels' launch: 4 warps, and 8 groups of ROWS rows per backward program (8x fewer partial sums of gamma's
# gradient) measured +1.1% and +1.3% for the whole 124M step on an H200 against 8 warps and 4 groups (session 14,
# `bash benchmarks/gpu_session14.sh launch`; the sweep alone: benchmarks/fused_kernels.py --norms).
WARPS = 4
GRAD_STEPS = 8


def layer_norm(x, gamma, beta, epsilon: float, kernel: str = "auto"):
    """(x - mean) / sqrt(var + epsilon) * gamma + beta over x's last axis, in x's dtype.

    `kernel`: "pallas" (a GPU; Pallas' interpreter elsewhere), "jnp", or
    "auto" (`devices.kernel_form`: pallas on an Ampere or newer GPU). Differentiable in x, gamma and beta.
    """
    return _differentiable()[0](x, gamma, beta, float(epsilon), _form(kernel))


def use_fused_layer_norm(model, kernel: str = "auto") -> int:
    """Make every plain LayerNormalization under `model` call `layer_norm` (with `kernel`); returns how many.

    The layers keep their variables (gamma, beta), so checkpoints and
    exports do not change; only how the JAX step computes them does.
    """
    import keras

    count = 0
    for layer in sublayers(model):
        if (type(layer) is keras.layers.LayerNormalization and layer.center and layer.scale
                and not layer.rms_scaling and list(layer.axis) == [-1]):
            layer.call = types.MethodType(functools.partial(_fused_call, kernel=kernel), layer)
            count += 1
    return count


def _fused_call(self, inputs, kernel: str = "auto"):
    """LayerNormalization.call through `layer_norm` (Keras also computes in float32, then casts)."""
    import keras

    gamma, beta = keras.ops.convert_to_tensor(self.gamma), keras.ops.convert_to_tensor(self.beta)
    return keras.ops.cast(layer_norm(inputs, gamma, beta, self.epsilon, kernel), self.compute_dtype)


def add_layer_norm(a, residual, gamma, beta, epsilon: float, kernel: str = "auto"):
    """(s, layer_norm(s)) for s = a + residual, in one pass forward and one backward.

    A pre-norm block's `x = x + residual` followed by the next norm: the sum
    is rounded to a's dtype first, as Keras' add is, then normalised. The
    backward pass adds s's own gradient (from its other uses) to the norm's.

        >>> import jax.numpy as jnp
        >>> s, y = add_layer_norm(jnp.array([[1.0, 1.0, 1.0]]), jnp.array([[0.0, 1.0, 2.0]]), jnp.ones(3),
        ...                       jnp.zeros(3), 1e-5)
        >>> s.tolist(), [round(float(v), 3) for v in y[0]]
        ([[1.0, 2.0, 3.0]], [-1.225, 0.0, 1.225])
    """
    return _differentiable()[1](a, residual.astype(a.dtype), gamma, beta, float(epsilon), _form(kernel))


def layer_norm_passing_input(x, gamma, beta, epsilon: float, kernel: str = "auto"):
    """(x, layer_norm(x)): x passes through, so its other uses' gradient joins the norm's in the one backward pass.

    A pre-norm block reads x twice, normalised and as the residual; without
    this, XLA adds the two gradients in a pass of its own.
    """
    return _differentiable()[2](x, gamma, beta, float(epsilon), _form(kernel))


def _form(kernel: str) -> str:
    return kernel_form() if kernel == "auto" else kernel


@functools.lru_cache(maxsize=None)
def _differentiable():
    """(layer_norm, add_layer_norm, layer_norm_passing_input) as `jax.custom_vjp`s (built on first use, so
    importing kgpt2 does not import jax)."""
    import jax

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
    def normalise(x, gamma, beta, epsilon, kernel):
        return _forward(x, gamma, beta, epsilon, kernel)[1]

    def normalise_forward(x, gamma, beta, epsilon, kernel):
        _, y, mean, rstd = _forward(x, gamma, beta, epsilon, kernel)
        return y, (x, gamma, beta, mean, rstd)

    def normalise_backward(epsilon, kernel, saved, dy):
        x, gamma, beta, mean, rstd = saved
        dx, dgamma, dbeta = _backward(x, mean, rstd, dy, gamma, kernel)
        return dx.astype(x.dtype), dgamma.astype(gamma.dtype), dbeta.astype(beta.dtype)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
    def add_normalise(a, residual, gamma, beta, epsilon, kernel):
        s, y, _, _ = _forward(a, gamma, beta, epsilon, kernel, residual)
        return s, y

    def add_forward(a, residual, gamma, beta, epsilon, kernel):
        s, y, mean, rstd = _forward(a, gamma, beta, epsilon, kernel, residual)
        return (s, y), (s, gamma, beta, mean, rstd)

    def add_backward(epsilon, kernel, saved, cotangents):
        s, gamma, beta, mean, rstd = saved
        ds, dy = cotangents
        d, dgamma, dbeta = _backward(s, mean, rstd, dy, gamma, kernel, ds)
        d = d.astype(s.dtype)  # a's and the residual's (add_layer_norm casts it to a's dtype)
        return d, d, dgamma.astype(gamma.dtype), dbeta.astype(beta.dtype)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
    def pass_normalise(x, gamma, beta, epsilon, kernel):
        return x, _forward(x, gamma, beta, epsilon, kernel)[1]

    def pass_forward(x, gamma, beta, epsilon, kernel):
        _, y, mean, rstd = _forward(x, gamma, beta, epsilon, kernel)
        return (x, y), (x, gamma, beta, mean, rstd)

    def pass_backward(epsilon, kernel, saved, cotangents):
        x, gamma, beta, mean, rstd = saved
        dx_other, dy = cotangents
        dx, dgamma, dbeta = _backward(x, mean, rstd, dy, gamma, kernel, dx_other)
        return dx.astype(x.dtype), dgamma.astype(gamma.dtype), dbeta.astype(beta.dtype)

    normalise.defvjp(normalise_forward, normalise_backward)
    add_normalise.defvjp(add_forward, add_backward)
    pass_normalise.defvjp(pass_forward, pass_backward)
    return normalise, add_normalise, pass_normalise


def _forward(x, gamma, beta, epsilon, kernel, residual=None):
    """(x + residual or x, its layer norm, row means, row 1/std), the first two in x's shape and dtype."""
    width = x.shape[-1]
    rows = x.reshape(-1, width)
    extra = () if residual is None else (residual.reshape(-1, width),)
    form = _forward_jnp if kernel == "jnp" else _forward_pallas
    s, y, mean, rstd = form(rows, *extra, gamma=gamma, beta=beta, epsilon=epsilon)
    return s.reshape(x.shape), y.reshape(x.shape), mean.reshape(x.shape[:-1]), rstd.reshape(x.shape[:-1])


def _backward(x, mean, rstd, dy, gamma, kernel, dx_other=None):
    """The norm's gradients (x's plus `dx_other` where given, gamma's, beta's); dx in x's shape."""
    width = x.shape[-1]
    rows = [x.reshape(-1, width), mean.reshape(-1), rstd.reshape(-1), dy.reshape(-1, width)]
    if dx_other is not None:
        rows.append(dx_other.reshape(-1, width))
    dx, dgamma, dbeta = (_backward_jnp if kernel == "jnp" else _backward_pallas)(*rows, gamma=gamma)
    return dx.reshape(x.shape), dgamma, dbeta


def _forward_jnp(rows, residual=None, *, gamma, beta, epsilon):
    import jax
    import jax.numpy as jnp

    if residual is not None:
        rows = (rows.astype("float32") + residual.astype("float32")).astype(rows.dtype)
    xf = rows.astype("float32")
    mean = jnp.mean(xf, axis=-1)
    centred = xf - mean[:, None]
    rstd = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1) + epsilon)
    y = centred * rstd[:, None] * gamma.astype("float32") + beta.astype("float32")
    return rows, y.astype(rows.dtype), mean, rstd


def _backward_jnp(rows, mean, rstd, dy, dx_other=None, *, gamma):
    import jax.numpy as jnp

    xhat = (rows.astype("float32") - mean[:, None]) * rstd[:, None]
    dy = dy.astype("float32")
    wdy = dy * gamma.astype("float32")
    c1 = jnp.mean(xhat * wdy, axis=-1, keepdims=True)
    c2 = jnp.mean(wdy, axis=-1, keepdims=True)
    dx = (wdy - xhat * c1 - c2) * rstd[:, None]
    if dx_other is not None:
        dx = dx + dx_other.astype("float32")
    return dx.astype(rows.dtype), jnp.sum(dy * xhat, axis=0), jnp.sum(dy, axis=0)


def _forward_pallas(rows, residual=None, *, gamma, beta, epsilon):
    _, _, jax, jnp = pallas_modules()
    n, width = rows.shape
    f32 = jnp.float32
    out_shape = [jax.ShapeDtypeStruct((n, width), rows.dtype), jax.ShapeDtypeStruct((n,), f32),
                 jax.ShapeDtypeStruct((n,), f32)]
    inputs = (rows, gamma, beta)
    if residual is not None:  # the kernel also writes the sum it normalised
        out_shape.append(jax.ShapeDtypeStruct((n, width), rows.dtype))
        inputs = (rows, residual, gamma, beta)
    kernel = functools.partial(_forward_kernel, n_rows=n, width=width, epsilon=epsilon, add=residual is not None)
    y, mean, rstd, *s = pallas_call(kernel, out_shape, "kgpt2_layer_norm", WARPS, programs=-(-n // ROWS))(*inputs)
    return (s[0] if s else rows), y, mean, rstd


def _backward_pallas(rows, mean, rstd, dy, dx_other=None, *, gamma):
    pl, _, jax, jnp = pallas_modules()
    n, width = rows.shape
    programs = pl.cdiv(n, ROWS * GRAD_STEPS)
    # gamma's and beta's partial sums side by side: XLA sums both in one reduction (one launch, not two)
    out_shape = [jax.ShapeDtypeStruct((n, width), rows.dtype), jax.ShapeDtypeStruct((programs, 2, width), jnp.float32)]
    kernel = functools.partial(_backward_kernel, n_rows=n, width=width, add=dx_other is not None)
    extra = () if dx_other is None else (dx_other,)
    dx, partial_sums = pallas_call(kernel, out_shape, "kgpt2_layer_norm_grad", WARPS, programs=programs)(
        rows, mean, rstd, dy, *extra, gamma)
    dgamma, dbeta = jnp.sum(partial_sums, axis=0)
    return dx, dgamma, dbeta


def _tile(n_rows: int, width: int, first_row):
    """ROWS rows from `first_row`: indices and masks (columns padded to a power of two for Triton)."""
    pl, _, _, jnp = pallas_modules()
    rows = first_row + jnp.arange(ROWS)
    columns = jnp.arange(pl.next_power_of_2(width))
    row_ok, column_ok = rows < n_rows, columns < width
    return rows, columns, row_ok, column_ok, row_ok[:, None] & column_ok[None, :]


def _forward_kernel(*refs, n_rows, width, epsilon, add):
    """ROWS rows normalised; with `add`, of x + residual (rounded to x's dtype, as Keras adds), also written."""
    pl, plgpu, jax, jnp = pallas_modules()
    if add:
        x_ref, residual_ref, gamma_ref, beta_ref, y_ref, mean_ref, rstd_ref, s_ref = refs
    else:
        x_ref, gamma_ref, beta_ref, y_ref, mean_ref, rstd_ref = refs
    rows, columns, row_ok, column_ok, ok = _tile(n_rows, width, pl.program_id(0) * ROWS)
    at = (rows[:, None], columns[None, :])
    x = plgpu.load(x_ref.at[at], mask=ok, other=0.0)
    if add:
        residual = plgpu.load(residual_ref.at[at], mask=ok, other=0.0)
        x = (x.astype(jnp.float32) + residual.astype(jnp.float32)).astype(s_ref.dtype)
        plgpu.store(s_ref.at[at], x, mask=ok)
    x = x.astype(jnp.float32)
    mean = jnp.sum(x, axis=1) / width
    centred = jnp.where(ok, x - mean[:, None], 0.0)
    rstd = jax.lax.rsqrt(jnp.sum(centred * centred, axis=1) / width + epsilon)
    gamma = plgpu.load(gamma_ref.at[columns], mask=column_ok, other=0.0).astype(jnp.float32)
    beta = plgpu.load(beta_ref.at[columns], mask=column_ok, other=0.0).astype(jnp.float32)
    y = centred * rstd[:, None] * gamma[None, :] + beta[None, :]
    plgpu.store(y_ref.at[at], y.astype(y_ref.dtype), mask=ok)
    plgpu.store(mean_ref.at[rows], mean, mask=row_ok)
    plgpu.store(rstd_ref.at[rows], rstd, mask=row_ok)


def _backward_kernel(*refs, n_rows, width, add):
    """GRAD_STEPS groups of ROWS rows: each row's dx (plus x's other gradient, with `add`), and one partial sum
    of gamma's and beta's gradients."""
    pl, plgpu, jax, jnp = pallas_modules()
    if add:
        x_ref, mean_ref, rstd_ref, dy_ref, other_ref, gamma_ref, dx_ref, partial_ref = refs
    else:
        x_ref, mean_ref, rstd_ref, dy_ref, gamma_ref, dx_ref, partial_ref = refs
    columns = jnp.arange(pl.next_power_of_2(width))
    column_ok = columns < width
    gamma = plgpu.load(gamma_ref.at[columns], mask=column_ok, other=0.0).astype(jnp.float32)
    program = pl.program_id(0)  # read here: Pallas' interpreter cannot lower program_id inside the loop

    def group(step, sums):
        rows, _, row_ok, _, ok = _tile(n_rows, width, (program * GRAD_STEPS + step) * ROWS)
        at = (rows[:, None], columns[None, :])
        mean = plgpu.load(mean_ref.at[rows], mask=row_ok, other=0.0)
        rstd = plgpu.load(rstd_ref.at[rows], mask=row_ok, other=0.0)
        x = plgpu.load(x_ref.at[at], mask=ok, other=0.0).astype(jnp.float32)
        xhat = jnp.where(ok, (x - mean[:, None]) * rstd[:, None], 0.0)
        dy = plgpu.load(dy_ref.at[at], mask=ok, other=0.0).astype(jnp.float32)
        wdy = dy * gamma[None, :]
        c1 = jnp.sum(xhat * wdy, axis=1) / width
        c2 = jnp.sum(wdy, axis=1) / width
        dx = (wdy - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        if add:
            dx = dx + plgpu.load(other_ref.at[at], mask=ok, other=0.0).astype(jnp.float32)
        plgpu.store(dx_ref.at[at], dx.astype(dx_ref.dtype), mask=ok)
        return sums[0] + jnp.sum(dy * xhat, axis=0), sums[1] + jnp.sum(dy, axis=0)

    zeros = jnp.zeros(columns.shape, jnp.float32)
    dgamma, dbeta = jax.lax.fori_loop(0, GRAD_STEPS, group, (zeros, zeros))
    plgpu.store(partial_ref.at[program, 0, columns], dgamma, mask=column_ok)
    plgpu.store(partial_ref.at[program, 1, columns], dbeta, mask=column_ok)
