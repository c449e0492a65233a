"""Causal attention at GPT-2's training shape, forward and forward + backward: cuDNN's fused kernel (what Keras
calls, and kgpt2 trains with) against JAX's Pallas kernels (Triton `ops.gpu.attention.mha`, and the Hopper
Mosaic-GPU `ops.gpu.attention_mgpu` at a few tile settings), each checked against cuDNN's output and gradients.

Attention is 4.45 ms of the 124M step's 29.6 busy ms on an H200 (benchmarks.md, round 10), ~1.1 TFLOP a step,
i.e. ~240 TFLOP/s: a kernel twice as fast would be worth ~7% of the step. This answers whether one exists here
before any of them is wired into a model.

    python benchmarks/attention_kernels.py [--batch 16 --seq 1024 --heads 12 --head-dim 64] [--out F.json]
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np


def timed(fn, *args, repeats: int = 200) -> float:
    """ms a call of `fn(*args)`: `repeats` calls dispatched back to back and synchronised once (a kernel of a few
    hundred microseconds timed call by call would be mostly the host's dispatch), best of three such runs."""
    for _ in range(2):
        jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) * 1e3 / repeats)
    return best


def candidates(head_dim: int) -> dict:
    """name -> f(q, k, v) causal attention with softmax scale 1/sqrt(head_dim), layout (batch, seq, heads, dim)."""
    scale = head_dim ** -0.5
    found = {"cudnn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn"),
             "xla": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")}
    try:
        from jax.experimental.pallas.ops.gpu import attention as triton_attention

        for bq, bk in ((64, 64), (128, 128), (64, 32)):
            sizes = triton_attention.BlockSizes(block_q=bq, block_k=bk, block_q_dkv=bq, block_kv_dkv=bk,
                                                block_q_dq=bq, block_kv_dq=bk)
            found[f"triton q{bq} k{bk}"] = (lambda s: lambda q, k, v: triton_attention.mha(
                q, k, v, None, sm_scale=scale, causal=True, block_sizes=s))(sizes)
    except Exception as e:  # noqa: BLE001 - report what is missing, measure the rest
        print("triton attention unavailable:", repr(e)[:200])
    try:
        from jax.experimental.pallas.ops.gpu import attention_mgpu as mgpu

        for bq, bkv, steps in ((64, 64, 2), (64, 128, 2), (64, 128, 3), (128, 64, 2)):
            config = mgpu.TuningConfig(block_q=bq, block_kv=bkv, max_concurrent_steps=steps, causal=True,
                                       block_q_dkv=64, block_kv_dkv=64, block_q_dq=64, block_kv_dq=64)
            # the kernel applies no softmax scale: q is scaled first (one element-wise pass, in the timing)
            found[f"mgpu q{bq} kv{bkv} s{steps}"] = (lambda c: lambda q, k, v: mgpu.attention(
                q * jnp.asarray(scale, q.dtype), k, v, c))(config)
    except Exception as e:  # noqa: BLE001
        print("mosaic attention unavailable:", repr(e)[:200])
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--out")
    a = ap.parse_args()
    keys = jax.random.split(jax.random.key(0), 4)
    shape = (a.batch, a.seq, a.heads, a.head_dim)
    flops = 4 * a.batch * a.heads * a.seq * a.seq * a.head_dim // 2  # causal: half the tiles
    rows = []
    # bfloat16 is what kgpt2 trains in; float16 too, because this JAX's Mosaic kernel takes no bfloat16
    for dtype in (jnp.bfloat16, jnp.float16):
        q, k, v, do = (jax.random.normal(key, shape, dtype) for key in keys)
        rows += measure(candidates(a.head_dim), q, k, v, do, flops)
    result = {"shape": shape, "device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": rows}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


def measure(kernels: dict, q, k, v, do, flops: int) -> list[dict]:
    """A row per kernel: its times and its largest difference from the first kernel that ran (cuDNN)."""
    rows, reference = [], None
    for name, attend in kernels.items():
        name = f"{name} {jnp.dtype(q.dtype).name}"
        forward = jax.jit(attend)
        both = jax.jit(lambda q, k, v, f=attend: jax.vjp(f, q, k, v)[1](do))
        try:
            out, grads = forward(q, k, v), both(q, k, v)
            if reference is None:
                reference = (out, grads)
            error = max(float(jnp.max(jnp.abs(x.astype(jnp.float32) - r.astype(jnp.float32))))
                        for x, r in zip((out, *grads), (reference[0], *reference[1])))
            fwd_ms, both_ms = timed(forward, q, k, v), timed(both, q, k, v)
        except Exception as e:  # noqa: BLE001 - a tile setting the kernel refuses is a row, not the end
            rows.append({"kernel": name, "error": repr(e)[:300]})
            print(f"{name:24s} failed: {repr(e)[:200]}")
            continue
        row = {"kernel": name, "forward_ms": round(fwd_ms, 4), "forward_backward_ms": round(both_ms, 4),
               "forward_tflops": round(flops / fwd_ms / 1e9, 1),
               "backward_tflops": round(2.5 * flops / max(both_ms - fwd_ms, 1e-6) / 1e9, 1),
               "max_abs_diff_vs_cudnn": round(error, 4)}
        rows.append(row)
        print(f"{name:24s} fwd {fwd_ms:7.3f} ms  fwd+bwd {both_ms:7.3f} ms  "
              f"({row['forward_tflops']} / {row['backward_tflops']} TFLOP/s)  max |diff| {error:.4f}")
    return rows


if __name__ == "__main__":
    main()
