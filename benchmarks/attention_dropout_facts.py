"""What this machine's JAX offers for attention with dropout, and what cuDNN's fused kernel would save (issue 21).

kgpt2's attention with dropout runs XLA's masked softmax + dropout, because
`jax.nn.dot_product_attention` (cuDNN flash attention) has no dropout
argument. JAX's private cuDNN wrapper
(`jax._src.cudnn.fused_attention_stablehlo.dot_product_attention`) has
`dropout_rate` and `seed`, but `seed` is a Python int that becomes part of
the compiled custom call (docs/pretraining.md, "Fused attention with
dropout"). This prints, for the lead's decision:

1. the JAX version, the wrapper's `seed` / `dropout_rate` parameters and
   whether JAX's Pallas GPU ops hold any attention with dropout;
2. on a GPU: whether the cuDNN kernel's dropout mask changes between two
   executions of one compiled function (XLA's runtime offset), also with
   every op in CUDA graphs (`xla_gpu_graph_min_graph_size=1`), and inside
   one execution's 10-step loop (as `steps_per_execution = 10` runs);
3. on a GPU: forward + backward ms of one attention call at the
   Shakespeare shape (batch 64, 256 tokens, 6 heads of 64, bf16, causal):
   cuDNN with dropout 0.2, cuDNN without dropout, and XLA's masked
   softmax with a threefry and an rbg dropout mask (what kgpt2 runs).

    python benchmarks/attention_dropout_facts.py          # in gpu_session.sh shake6; on a CPU: part 1 only
"""

from __future__ import annotations

import inspect
import os
import time


def facts() -> None:
    import jax
    import jax.experimental.pallas.ops.gpu as pallas_gpu
    from jax._src.cudnn import fused_attention_stablehlo as fa

    print("jax", jax.__version__, "on", jax.devices()[0].device_kind)
    params = inspect.signature(fa.dot_product_attention).parameters
    print("cuDNN wrapper:", params.get("seed"), "|", params.get("dropout_rate"))
    folder = os.path.dirname(pallas_gpu.__file__)
    hits = [f for f in sorted(os.listdir(folder)) if f.endswith(".py") and "dropout" in open(os.path.join(folder, f)).read()]
    print("Pallas GPU ops that mention dropout:", hits or "none")


def _qkv(b=64, t=256, n=6, h=64):
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0), 3)
    return [jax.random.normal(k, (b, t, n, h), jnp.bfloat16) for k in keys]


def cudnn_attention(rate: float):
    from jax._src.cudnn import fused_attention_stablehlo as fa

    def attend(q, k, v):
        return fa.dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5, mask_type=fa.MaskType.CAUSAL,
                                        dropout_rate=rate, seed=42)
    return attend


def xla_attention(rate: float, impl: str):
    import jax
    import jax.numpy as jnp

    def attend(q, k, v, seed):
        t = q.shape[1]
        scores = jnp.einsum("btnh,bsnh->bnts", q, k).astype(jnp.float32) * q.shape[-1] ** -0.5
        scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, -1e9)
        probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
        key = jax.random.wrap_key_data(jnp.concatenate([seed, seed ^ jnp.uint32(0x9E3779B9)]) if impl == "rbg"
                                       else seed, impl=impl)
        keep = jax.random.bernoulli(key, 1 - rate, probs.shape)
        probs = jnp.where(keep, probs / (1 - rate), 0).astype(q.dtype)
        return jnp.einsum("bnts,bsnh->btnh", probs, v)
    return attend


def masks_change(options: dict | None = None) -> str:
    """Does the cuDNN kernel drop other positions on the next execution, and on the next loop step?"""
    import jax
    import jax.numpy as jnp
    import numpy as np

    q, k, v = _qkv(b=2, t=128, n=2)
    attend = cudnn_attention(0.5)
    once = jax.jit(attend, compiler_options=options)
    a, b = np.asarray(once(q, k, v), np.float32), np.asarray(once(q, k, v), np.float32)

    def ten(q, k, v):  # one execution, ten calls in a loop (steps_per_execution = 10)
        return jax.lax.fori_loop(0, 10, lambda i, acc: acc.at[i].set(attend(q, k, v)), jnp.zeros((10, *q.shape), q.dtype))
    loop = np.asarray(jax.jit(ten, compiler_options=options)(q, k, v), np.float32)
    return (f"next execution differs: {bool(np.abs(a - b).max() > 0)}; loop steps 0 and 1 differ: "
            f"{bool(np.abs(loop[0] - loop[1]).max() > 0)}; loop steps 0 and 9 differ: {bool(np.abs(loop[0] - loop[9]).max() > 0)}")


def timed_ms(attend, *args, repeat=50) -> float:
    import jax

    step = jax.jit(jax.grad(lambda q, k, v, *rest: attend(q, k, v, *rest).astype("float32").sum(), argnums=(0, 1, 2)))
    jax.block_until_ready(step(*args))
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = step(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) * 1e3 / repeat


def gpu_probe() -> None:
    import jax.numpy as jnp

    for name, options in (("default", None), ("every op in CUDA graphs", {"xla_gpu_graph_min_graph_size": 1})):
        try:
            print(f"cuDNN dropout masks ({name}):", masks_change(options))
        except Exception as e:  # noqa: BLE001 - an unsupported kernel is a finding, not the end
            print(f"cuDNN dropout masks ({name}): {type(e).__name__}: {str(e).strip()[:300]}")
    qkv, seed = _qkv(), jnp.array([1, 2], jnp.uint32)
    rows = [("cuDNN, dropout 0.2", cudnn_attention(0.2), ()), ("cuDNN, no dropout", cudnn_attention(0.0), ()),
            ("XLA masked softmax, threefry dropout 0.2", xla_attention(0.2, "threefry2x32"), (seed,)),
            ("XLA masked softmax, rbg dropout 0.2", xla_attention(0.2, "rbg"), (seed,))]
    print("one attention call, forward + backward, batch 64 x 256, 6 x 64, bf16, causal (x 6 layers per step):")
    for name, attend, extra in rows:
        try:
            print(f"  {name}: {timed_ms(attend, *qkv, *extra):.3f} ms")
        except Exception as e:  # noqa: BLE001
            print(f"  {name}: {type(e).__name__}: {str(e).strip()[:300]}")


def main() -> None:
    import jax

    facts()
    if jax.devices()[0].platform == "gpu":
        gpu_probe()
    else:
        print("no GPU: parts 2 and 3 need one")


if __name__ == "__main__":
    main()
