"""Next-token cross-entropy over bf16 logits in two passes: one read forward, one read and write backward.

XLA compiles the plain loss (Keras' sparse cross-entropy from logits, plus
the accuracy metric) into five passes over the 16 x 1,024 x 50,304 logits of
a GPT-2 training step: a max, a sum of exponentials (with the argmax), a
reduction of the one-hot gradient, and the softmax gradient, splitting each
50,304-long row into 128 pieces of 393 (1.5-3.2 TB/s on an H200, 3.75 ms of a
34 ms step; docs/benchmarks.md "Training speed, round 8"). Neither Keras,
keras-hub nor JAX has a fused LM loss, so kgpt2 writes this one:

- forward: one kernel reads each row once, keeping a running max and sum of
  exponentials (the online softmax), the target's logit and the first index of
  the max (what `SparseCategoricalAccuracy` compares), float32 throughout;
  on a GPU it is a Pallas (Triton) kernel, elsewhere the same math in jnp;
- backward (`jax.custom_vjp`): (softmax - one-hot) x the row's gradient,
  one elementwise pass, because the one-hot's sum is known to be 1.

Columns >= `real_vocabulary` (kgpt2's padded vocabulary rows) never count:
their probability and gradient are zero.

    >>> import jax.numpy as jnp
    >>> from kgpt2.cross_entropy import token_cross_entropy
    >>> logits = jnp.array([[[2.0, 0.0, 0.0, 9.0]]], dtype="bfloat16")
    >>> loss, correct = token_cross_entropy(logits, jnp.array([[0]]), 3)  # column 3 is padding
    >>> round(float(loss[0, 0]), 4), float(correct[0, 0])
    (0.2395, 1.0)
"""

from __future__ import annotations

import functools

from kgpt2.devices import kernel_form

BLOCK = 2048  # columns a kernel step reads (bf16: 4 kB); a power of two, as Triton's blocks must be
WARPS, STAGES = 4, 2  # the kernel's launch (benchmarks/fused_kernels.py)
_NO_INDEX = 2**31 - 1


def token_cross_entropy(logits, labels, real_vocabulary: int, kernel: str = "auto"):
    """Per-token (loss, correct) of `logits` [..., V] against int `labels` [...].

    loss = logsumexp(logits[:real]) - logits[label], float32; correct = 1.0 where
    the first maximum of logits[:real] is at `label`. `kernel`: "pallas" (a GPU,
    or Pallas' interpreter elsewhere: tests), "jnp", or "auto" (`devices.kernel_form`).
    Differentiable in `logits` only.
    """
    if kernel == "auto":
        kernel = kernel_form()
    return _differentiable()(logits, labels.astype("int32"), int(real_vocabulary), kernel)


@functools.lru_cache(maxsize=None)
def _differentiable():
    """The loss as a `jax.custom_vjp` (built on first use, so importing kgpt2 does not import jax)."""
    import jax
    import jax.numpy as jnp

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
    def cross_entropy(logits, labels, real, kernel):
        lse, target, correct = _forward(logits, labels, real, kernel)
        return lse - target, correct

    def forward(logits, labels, real, kernel):
        lse, target, correct = _forward(logits, labels, real, kernel)
        return (lse - target, correct), (logits, labels, lse)

    def backward(real, kernel, residuals, cotangents):
        logits, labels, lse = residuals
        g_loss, _ = cotangents  # `correct` is a count, not differentiable
        column = jnp.arange(logits.shape[-1])
        softmax = jnp.where(column < real, jnp.exp(logits.astype("float32") - lse[..., None]), 0.0)
        one_hot = (column == labels[..., None]).astype("float32")
        return (((softmax - one_hot) * g_loss[..., None]).astype(logits.dtype), None)

    cross_entropy.defvjp(forward, backward)
    return cross_entropy


def _forward(logits, labels, real: int, kernel: str):
    import jax

    if kernel == "jnp":
        return _forward_jnp(logits, labels, real)
    rows = logits.reshape(-1, logits.shape[-1])
    lse, target, correct = _forward_pallas(rows, labels.reshape(-1), real, interpret=jax.devices()[0].platform != "gpu")
    return lse.reshape(labels.shape), target.reshape(labels.shape), correct.reshape(labels.shape)


def _forward_jnp(logits, labels, real: int):
    import jax
    import jax.numpy as jnp

    wide = logits[..., :real].astype("float32")
    lse = jax.nn.logsumexp(wide, axis=-1)
    target = jnp.take_along_axis(wide, labels[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(wide, axis=-1) == labels).astype("float32")
    return lse, target, correct


def _forward_pallas(rows, labels, real: int, interpret: bool):
    import jax
    import jax.numpy as jnp
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    one_row = pl.pallas_call(
        functools.partial(_row_kernel, real=real, width=rows.shape[-1]),
        out_shape=[scalar, scalar, scalar],
        compiler_params=plgpu.CompilerParams(num_warps=WARPS, num_stages=STAGES),
        interpret=interpret,
        name="kgpt2_cross_entropy",
    )
    return jax.vmap(one_row)(rows, labels)  # one program per row, as jax's Pallas layer norm does


def _row_kernel(row_ref, label_ref, lse_ref, target_ref, correct_ref, *, real: int, width: int):
    """One row: a running max, and per lane a sum of exp, the target's logit and the first argmax.

    Per-lane accumulators leave one cross-lane reduction (the max) per block; the
    rest are reduced once at the end. Loads are masked at the row's stored
    `width` (50,304: a multiple of 8, so Triton can vectorise them) and the
    padded columns >= `real` are masked in registers.
    """
    import jax
    import jax.numpy as jnp
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    label = label_ref[...]

    def step(i, carry):
        top, sums, best, first, target = carry
        column = i * BLOCK + jnp.arange(BLOCK)
        x = plgpu.load(row_ref.at[column], mask=column < width, other=-jnp.inf).astype(jnp.float32)
        x = jnp.where(column < real, x, -jnp.inf)
        new_top = jnp.maximum(top, jnp.max(x))
        sums = sums * jnp.exp(top - new_top) + jnp.exp(x - new_top)
        first = jnp.where(x > best, column, first)  # a lane's columns rise: the strict > keeps its first max
        best = jnp.maximum(best, x)
        target = target + jnp.where(column == label, x, 0.0)
        return new_top, sums, best, first, target

    lanes = jnp.zeros(BLOCK, jnp.float32)
    start = (jnp.float32(-jnp.inf), lanes, lanes - jnp.inf, jnp.full(BLOCK, _NO_INDEX, jnp.int32), lanes)
    top, sums, best, first, target = jax.lax.fori_loop(0, pl.cdiv(real, BLOCK), step, start)
    lse_ref[...] = top + jnp.log(jnp.sum(sums))
    target_ref[...] = jnp.sum(target)
    overall = jnp.max(best)
    correct_ref[...] = (jnp.min(jnp.where(best == overall, first, _NO_INDEX)) == label).astype(jnp.float32)
