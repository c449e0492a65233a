"""Next-token cross-entropy over bf16 logits in two passes: one read forward, one read and write backward.

XLA compiles the plain loss (Keras' sparse cross-entropy from logits, plus
the accuracy metric) into five passes over the 16 x 1,024 x 50,304 logits of
a GPT-2 training step: a max, a sum of exponentials (with the argmax), a
reduction of the one-hot gradient, and the softmax gradient, splitting each
50,304-long row into 128 pieces of 393 (1.5-3.2 TB/s on an H200, 3.75 ms of a
34 ms step; docs/benchmarks.md "Training speed, round 8"). Neither Keras,
keras-hub nor JAX has a fused LM loss, so kgpt2 writes this one:

- forward: one kernel reads each row once, keeping a running max and sum of
  exponentials (the online softmax) and the first index of the max (what
  `SparseCategoricalAccuracy` compares), float32 throughout; the target's
  logit is a gather of one value a row. On a GPU a Pallas (Triton) kernel,
  elsewhere the same math in jnp;
- backward (`jax.custom_vjp`): (softmax - one-hot) x the row's gradient,
  one elementwise pass (the one-hot's sum is known to be 1); on a GPU a
  Pallas kernel too (3.0 TB/s as XLA's fusion, faster as a kernel: round 9).

Columns >= `real_vocabulary` (kgpt2's padded vocabulary rows) never count:
their probability and gradient are zero.

    >>> import jax.numpy as jnp
    >>> from kgpt2.kernels.cross_entropy import token_cross_entropy
    >>> logits = jnp.array([[[2.0, 0.0, 0.0, 9.0]]], dtype="bfloat16")
    >>> loss, correct = token_cross_entropy(logits, jnp.array([[0]]), 3)  # column 3 is padding
    >>> round(float(loss[0, 0]), 4), float(correct[0, 0])
    (0.2395, 1.0)
"""

from __future__ import annotations

import functools

from kgpt2.training.devices import kernel_form, pallas_call, pallas_modules

BLOCK = 2048  # columns a kernel step reads (bf16: 4 kB); a power of two, as Triton's blocks must be
WARPS, STAGES = 4, 2  # the kernel's launch (benchmarks/fused_kernels.py)
_NO_INDEX = 2**31 - 1
_LOG2E = 1.4426950408889634


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
        if kernel == "pallas":
            return _backward_pallas(logits, labels, lse, g_loss, real), None
        column = jnp.arange(logits.shape[-1])
        softmax = jnp.where(column < real, jnp.exp(logits.astype("float32") - lse[..., None]), 0.0)
        one_hot = (column == labels[..., None]).astype("float32")
        return (((softmax - one_hot) * g_loss[..., None]).astype(logits.dtype), None)

    cross_entropy.defvjp(forward, backward)
    return cross_entropy


def _forward(logits, labels, real: int, kernel: str):
    import jax.numpy as jnp

    if kernel == "jnp":
        return _forward_jnp(logits, labels, real)
    rows, flat = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    lse, first = _forward_pallas(rows, real)
    # The target's logit is one gather per row (XLA), not a compare-select-add per column in the kernel.
    target = jnp.take_along_axis(rows, flat[:, None], axis=-1)[:, 0].astype(jnp.float32)
    correct = (first == flat).astype(jnp.float32)
    return lse.reshape(labels.shape), target.reshape(labels.shape), correct.reshape(labels.shape)


def _forward_jnp(logits, labels, real: int):
    import jax
    import jax.numpy as jnp

    wide = logits[..., :real].astype("float32")
    lse = jax.nn.logsumexp(wide, axis=-1)
    target = jnp.take_along_axis(wide, labels[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(wide, axis=-1) == labels).astype("float32")
    return lse, target, correct


def _forward_pallas(rows, real: int):
    """Per row: logsumexp over the first `real` columns, and the first column holding their maximum."""
    _, _, jax, jnp = pallas_modules()
    one_row = pallas_call(functools.partial(_row_kernel, real=real, width=rows.shape[-1]),
                          [jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((), jnp.int32)],
                          "kgpt2_cross_entropy", WARPS, STAGES)
    return jax.vmap(one_row)(rows)  # one program per row, as jax's Pallas layer norm does


def _row_block(row_ref, i, real: int, width: int, tail: bool):
    """Columns [i * BLOCK, (i + 1) * BLOCK) of a row in float32; in the `tail` block those >= `real` are -inf.

    Whole blocks load without a mask. The tail's load is masked at the stored
    `width` (a multiple of 8, so Triton can still vectorise it) and the padded
    columns are masked in registers.
    """
    pl, plgpu, _, jnp = pallas_modules()
    if not tail:
        return row_ref[pl.ds(i * BLOCK, BLOCK)].astype(jnp.float32)
    column = i * BLOCK + jnp.arange(BLOCK)
    x = plgpu.load(row_ref.at[column], mask=column < width, other=-jnp.inf).astype(jnp.float32)
    return jnp.where(column < real, x, -jnp.inf)


def _row_kernel(row_ref, lse_ref, first_ref, *, real: int, width: int):
    """One row: a running max, and per lane a sum of exp and the block of the lane's first maximum.

    Per element: a max, one exp2 (its argument one fused multiply-add), a
    multiply-add, and a compare-select for the argmax; one cross-lane max per
    block. Base-2 exponentials: Triton's exp is exp2 after a multiply anyway.
    """
    import jax
    import jax.numpy as jnp

    def step(i, carry, tail=False):
        top, sums, best, block = carry
        x = _row_block(row_ref, i, real, width, tail)
        new_top = jnp.maximum(top, jnp.max(x))
        sums = sums * jnp.exp2((top - new_top) * _LOG2E) + jnp.exp2(x * _LOG2E - new_top * _LOG2E)
        block = jnp.where(x > best, i, block)  # a lane's blocks rise: the strict > keeps its first maximum
        return new_top, sums, jnp.maximum(best, x), block

    lanes = jnp.zeros(BLOCK, jnp.float32)
    carry = (jnp.float32(-jnp.inf), lanes, lanes - jnp.inf, jnp.zeros(BLOCK, jnp.int32))
    carry = jax.lax.fori_loop(0, real // BLOCK, step, carry)
    if real % BLOCK:
        carry = step(real // BLOCK, carry, tail=True)
    top, sums, best, block = carry
    lse_ref[...] = top + jnp.log(jnp.sum(sums))
    column = block * BLOCK + jnp.arange(BLOCK)
    first_ref[...] = jnp.min(jnp.where(best == jnp.max(best), column, _NO_INDEX))


def _backward_pallas(logits, labels, lse, g_loss, real: int):
    """(softmax - one-hot) x g per row, written in the logits' dtype by a Pallas kernel (one program a row)."""
    _, _, jax, jnp = pallas_modules()
    width = logits.shape[-1]
    rows = logits.reshape(-1, width)
    one_row = pallas_call(functools.partial(_grad_kernel, real=real, width=width),
                          jax.ShapeDtypeStruct((width,), logits.dtype), "kgpt2_cross_entropy_grad", WARPS, STAGES)
    grads = jax.vmap(one_row)(rows, labels.reshape(-1), lse.reshape(-1), g_loss.reshape(-1).astype(jnp.float32))
    return grads.reshape(logits.shape)


def _grad_kernel(row_ref, label_ref, lse_ref, g_ref, out_ref, *, real: int, width: int):
    """One row's gradient, block by block: exp(x - lse) x g, less g at the label; zero at columns >= `real`."""
    pl, plgpu, jax, jnp = pallas_modules()
    label, g, shift = label_ref[...], g_ref[...], lse_ref[...] * _LOG2E

    def step(i, carry, tail=False):
        p = jnp.exp2(_row_block(row_ref, i, real, width, tail) * _LOG2E - shift)  # padding: exp2(-inf) = 0
        column = i * BLOCK + jnp.arange(BLOCK)
        grad = (jnp.where(column == label, p - 1.0, p) * g).astype(out_ref.dtype)
        if tail:
            plgpu.store(out_ref.at[column], grad, mask=column < width)
        else:
            out_ref[pl.ds(i * BLOCK, BLOCK)] = grad
        return carry

    jax.lax.fori_loop(0, real // BLOCK, step, 0)
    for i in range(real // BLOCK, pl.cdiv(width, BLOCK)):  # the block holding `real`, and any padding past it
        step(i, 0, tail=True)
