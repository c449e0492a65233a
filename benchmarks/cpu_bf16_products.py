"""Why kgpt2 decodes in float32 on a CPU: XLA's CPU dots in bfloat16, alone and inside a loop.

One token's weight products of the GPT-2 124M shape (12 layers x the query/key/value,
output, MLP-in and MLP-out products, then the tied 50,257-wide logits), one row,
as one jitted chain; weights stored [in, out] or [out, in]; float32 or bfloat16
(accumulated in float32). "loop": the same chain for 8 tokens inside a
`fori_loop`, as a decode loop runs it (ms a token). No kgpt2 code: this isolates
the compiler's behaviour (docs/benchmarks.md, "Generation on the CPU, round 4").

Then (round 5) the form kgpt2 decodes bfloat16 weights with on a JAX CPU
(kgpt2.generation.fused_decode, `bfloat16_products`): float32 rows times bfloat16 [out, in]
weights upcast inside each product, the weights in the loop's state behind an
optimization barrier each token, with each layer's bias added plainly (XLA fuses
the add into the product and stops fusing the upcast) or after a barrier on the
product (as kgpt2 does).

    KERAS_BACKEND=jax .venv/bin/python benchmarks/cpu_bf16_products.py
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]  # (in, out) of one layer's products
LAYERS, VOCABULARY, LOOP_TOKENS = 12, 50257, 8


def chain(x, weights, embedding, out_in: bool, dtype):
    def product(h, w):
        return jnp.dot(h.astype(dtype), w.T if out_in else w, preferred_element_type=jnp.float32)

    h = x
    for layer in range(LAYERS):
        qkv, out, fc, proj = weights[4 * layer:4 * layer + 4]
        h = h + product(product(h, qkv)[:, :768], out)
        h = h + product(jax.nn.gelu(product(h, fc)), proj)
    return jnp.dot(h.astype(dtype), embedding.T, preferred_element_type=jnp.float32)


def timed(fn, *args, repeats=15) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 768), dtype=np.float32))
    embedding32 = rng.standard_normal((VOCABULARY, 768), dtype=np.float32) * 0.02
    for dtype in (jnp.float32, jnp.bfloat16):
        for out_in in (False, True):
            weights = [jnp.asarray(rng.standard_normal(s[::-1] if out_in else s, dtype=np.float32) * 0.02, dtype)
                       for _ in range(LAYERS) for s in SHAPES]
            embedding = jnp.asarray(embedding32, dtype)

            def alone(x, w, e, out_in=out_in, dtype=dtype):
                return chain(x, w, e, out_in, dtype)

            def loop(x, w, e, out_in=out_in, dtype=dtype):
                return jax.lax.fori_loop(0, LOOP_TOKENS, lambda i, h: h + chain(h, w, e, out_in, dtype)[:, :768], x)

            one = timed(jax.jit(alone), x, weights, embedding)
            looped = timed(jax.jit(loop), x, weights, embedding) / LOOP_TOKENS
            layout = "[out, in]" if out_in else "[in, out]"
            print(f"{jnp.dtype(dtype).name:>8} {layout}: alone {one:7.2f} ms, in a loop {looped:7.2f} ms a token",
                  flush=True)


def opaque_loop(rng, x):
    """ms a token of the layer products with biases + logits, bfloat16 [out, in] weights, float32 rows, 16 tokens
    in a loop whose state carries the weights through an optimization barrier; the bias added plainly or after
    a barrier on the product."""
    weights = [jnp.asarray(rng.standard_normal(s[::-1], dtype=np.float32) * 0.02, jnp.bfloat16)
               for _ in range(LAYERS) for s in SHAPES]
    biases = [jnp.asarray(rng.standard_normal(s[1], dtype=np.float32) * 0.02) for _ in range(LAYERS) for s in SHAPES]
    embedding = jnp.asarray(rng.standard_normal((VOCABULARY, 768), dtype=np.float32) * 0.02, jnp.bfloat16)
    forms = {"bias added plainly": lambda h, w, b: h @ w.astype(jnp.float32).T + b,
             "bias added after a barrier (kgpt2)": lambda h, w, b: jax.lax.optimization_barrier(
                 h @ w.astype(jnp.float32).T) + b}
    for name, product in forms.items():
        def loop(x, w, b, e, product=product):
            def body(_, carry):
                h, w, e = carry
                w, e = jax.lax.optimization_barrier((w, e))
                for layer in range(LAYERS):
                    qkv, out, fc, proj = w[4 * layer:4 * layer + 4]
                    bq, bo, bf, bp = b[4 * layer:4 * layer + 4]
                    h = h + product(product(h, qkv, bq)[:, :768], out, bo)
                    h = h + product(jax.nn.gelu(product(h, fc, bf)), proj, bp)
                return h + (h @ e.astype(jnp.float32).T)[:, :768] * 1e-3, w, e
            return jax.lax.fori_loop(0, 16, body, (x, w, e))[0]

        ms = timed(jax.jit(loop), x, weights, biases, embedding, repeats=5) / 16
        print(f"bfloat16 [out, in], weights opaque in the loop, {name}: {ms:7.2f} ms a token", flush=True)


if __name__ == "__main__":
    main()
    opaque_loop(np.random.default_rng(1), jnp.asarray(np.random.default_rng(2).standard_normal((1, 768), np.float32)))
