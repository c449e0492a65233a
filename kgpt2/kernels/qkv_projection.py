"""Query, key and value projected together, their gradients gathered in one pass (JAX; kgpt2.kernels.fused_block).

Keras' MultiHeadAttention projects q, k and v with three EinsumDense
layers. XLA merges their matmuls into one over the concatenated kernels,
but backward it then concatenates dq, dk and dv into one array (0.41 ms of
a 31 ms GPT-2 124M step on an H200) and sums each bias gradient in passes
of its own (0.45 ms), reading the same 75 MB per layer twice
(docs/benchmarks.md, "Training speed, round 10"). Here the backward pass
writes the concatenated gradient and the bias gradients' partial sums in
one Pallas (Triton) kernel; the matmuls are XLA's as before. No JAX or
Keras op does both at once, hence this kernel. Elsewhere (kernel="jnp") the
same math in jnp; kernel="pallas" off a GPU runs in Pallas' interpreter.

    >>> import jax.numpy as jnp
    >>> x, w, b = jnp.ones((1, 2, 4)), jnp.ones((4, 2, 3)), jnp.zeros((2, 3))
    >>> q, k, v = qkv_projection(x, w, b, 2 * w, b, 3 * w, b, kernel="jnp")
    >>> q.shape, float(k[0, 0, 0, 0]), float(v[0, 0, 0, 0])
    ((1, 2, 2, 3), 8.0, 12.0)
"""

from __future__ import annotations

import functools

from kgpt2.training.devices import kernel_form, pallas_call, pallas_modules

ROWS = 16  # rows a kernel program copies at once
STEPS = 4  # groups of ROWS rows per program: fewer partial sums of the bias gradients
WARPS = 8


def qkv_projection(x, query_kernel, query_bias, key_kernel, key_bias, value_kernel, value_bias, kernel="auto"):
    """(q, k, v) = x @ kernel + bias for each, kernels [width, heads, head_dim] (Keras' "abc,cde->abde").

    Rounded as Keras rounds: each product in x's dtype, then its bias added.
    Differentiable in every argument; `kernel` as in kgpt2.kernels.layer_norm.
    """
    return _differentiable()(x, (query_kernel, key_kernel, value_kernel), (query_bias, key_bias, value_bias),
                             kernel_form() if kernel == "auto" else kernel)


@functools.lru_cache(maxsize=None)
def _differentiable():
    import jax
    import jax.numpy as jnp

    def project(x, kernels, biases):
        width = x.shape[-1]
        merged = jnp.concatenate([w.reshape(width, -1) for w in kernels], axis=1)
        products = jnp.dot(x.reshape(-1, width), merged)  # one matmul, as XLA's dot merger makes of three
        outputs, start = [], 0
        for w, b in zip(kernels, biases):
            size = b.size
            out = products[:, start:start + size] + b.reshape(-1)
            outputs.append(out.reshape(x.shape[:-1] + w.shape[1:]))
            start += size
        return tuple(outputs), merged

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
    def qkv(x, kernels, biases, kernel):
        return project(x, kernels, biases)[0]

    def forward(x, kernels, biases, kernel):
        outputs, merged = project(x, kernels, biases)
        return outputs, (x, merged, biases)  # the biases (a few kB): their shapes and dtypes for the gradients

    def backward(kernel, saved, cotangents):
        x, merged, biases = saved
        width = x.shape[-1]
        # Each output is its product (in the product's dtype) plus a bias that may be wider: the product's
        # gradient is the output's, rounded to the product's dtype.
        product_dtype = jnp.result_type(x.dtype, merged.dtype)
        grads = [g.reshape(-1, g.shape[-2] * g.shape[-1]).astype(product_dtype) for g in cotangents]
        gathered, bias_sums = (_gather_jnp if kernel == "jnp" else _gather_pallas)(grads)
        rows = x.reshape(-1, width)
        dx = jnp.dot(gathered, merged.T).reshape(x.shape).astype(x.dtype)
        dmerged = jnp.dot(rows.T, gathered)
        dkernels, dbiases, start = [], [], 0
        for bias, grad in zip(biases, grads):
            size = grad.shape[1]
            dkernels.append(dmerged[:, start:start + size].reshape((width,) + bias.shape).astype(merged.dtype))
            dbiases.append(bias_sums[start:start + size].reshape(bias.shape).astype(bias.dtype))
            start += size
        return dx, tuple(dkernels), tuple(dbiases)

    qkv.defvjp(forward, backward)
    return qkv


def _gather_jnp(grads):
    """The gradients side by side, and each column's sum (the bias gradients) in float32."""
    import jax.numpy as jnp

    gathered = jnp.concatenate(grads, axis=1)
    return gathered, jnp.sum(gathered.astype("float32"), axis=0)


def _gather_pallas(grads):
    """`_gather_jnp` in one kernel: each program copies ROWS * STEPS rows of each gradient into place and
    sums their columns (float32), XLA adds the programs' partial sums."""
    pl, _, jax, jnp = pallas_modules()
    n, widths = grads[0].shape[0], tuple(g.shape[1] for g in grads)
    total, programs = sum(widths), pl.cdiv(n, ROWS * STEPS)
    out_shape = [jax.ShapeDtypeStruct((n, total), grads[0].dtype),
                 jax.ShapeDtypeStruct((programs, total), jnp.float32)]
    kernel = functools.partial(_gather_kernel, n_rows=n, widths=widths)
    gathered, partial_sums = pallas_call(kernel, out_shape, "kgpt2_qkv_grad", WARPS, programs=programs)(*grads)
    return gathered, jnp.sum(partial_sums, axis=0)


def _gather_kernel(*refs, n_rows, widths):
    pl, plgpu, jax, jnp = pallas_modules()
    grad_refs, (out_ref, partial_ref) = refs[:len(widths)], refs[len(widths):]
    program = pl.program_id(0)  # read here: Pallas' interpreter cannot lower program_id inside the loop
    columns = jnp.arange(pl.next_power_of_2(max(widths)))  # Triton tiles are powers of two: masked past width

    def step(index, sums):
        rows = (program * STEPS + index) * ROWS + jnp.arange(ROWS)
        row_ok = rows < n_rows
        new, start = [], 0
        for grad_ref, width, total in zip(grad_refs, widths, sums):
            ok = row_ok[:, None] & (columns < width)[None, :]
            tile = plgpu.load(grad_ref.at[rows[:, None], columns[None, :]], mask=ok, other=0.0)
            plgpu.store(out_ref.at[rows[:, None], start + columns[None, :]], tile, mask=ok)
            new.append(total + jnp.sum(tile.astype(jnp.float32), axis=0))
            start += width
        return tuple(new)

    zeros = tuple(jnp.zeros(columns.shape, jnp.float32) for _ in widths)
    sums = jax.lax.fori_loop(0, STEPS, step, zeros)
    start = 0
    for width, total in zip(widths, sums):
        plgpu.store(partial_ref.at[program, start + columns], total, mask=columns < width)
        start += width
