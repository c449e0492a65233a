"""Decode step A/B: keras-hub's decoder layers against kgpt2.generation.fused_decode's blocks, same loop, same weights.

Both steps run inside one jitted loop of `--new-tokens` greedy steps after the
same prompt (teacher-forced through the same step), in one process, in turns:
ms a token (median of `--repeats`), the greedy tokens of each (how many
positions agree), and on a GPU a device profile (kernels a token, busy time).
Rows 1 (batch 1) and `--rows` (a few streams).

    KERAS_BACKEND=jax python benchmarks/decode_step_ab.py --tiny                  # CPU dry run, float32
    KERAS_BACKEND=jax python benchmarks/decode_step_ab.py --out $OUT/ab.json      # GPU: 124M shape, bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--dtype", default=None, help="default float32 on cpu, bfloat16 on gpu")
    p.add_argument("--prompt-tokens", type=int, default=28)
    p.add_argument("--new-tokens", type=int, default=100)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--top", type=int, default=30, help="kernels listed in each profile")
    p.add_argument("--hlo", default=None, help="a folder: write each loop's optimised HLO there (rows 1)")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


# name -> (decoder blocks, one row's products as row sums, one-pass layer-norm moments)
VARIANTS = {"keras-hub layers": ("keras-hub", False, False), "fused blocks": ("fused", False, False),
            "fused, gemv": ("fused", True, False), "fused, gemv, one-pass norm": ("fused", True, True)}


def variant_programs(model, rows: int, length: int, steps: int) -> dict:
    """name -> kgpt2 `Programs` whose own one-token step (`_step`) the loop runs, blocks forced per variant."""
    from kgpt2.generation.decoding import Programs

    out = {}
    for name, (blocks, gemv, one_pass) in VARIANTS.items():
        programs = out[name] = Programs(model, rows, length, steps, 1, blocks=blocks)
        if programs.blocks is not None:
            programs.blocks.gemv, programs.blocks.one_pass_norm = gemv, one_pass
    return out


def loop(programs, n_prompt, n_new):
    """A jitted (values, caches, prompt [rows, P]) -> greedy tokens [rows, n_new] on `programs`' step."""
    import jax
    from keras import ops

    length = programs.cache_length

    def run(values, caches, prompt):
        rows = prompt.shape[0]
        fused = programs.blocks.fuse(values, rows) if programs.blocks is not None else ()
        offsets = ops.broadcast_to(ops.arange(length, dtype="int32")[None, :], (rows, length))

        def feed(i, state):
            caches, _ = state
            pos = ops.full((rows,), i, "int32")
            caches, logits = programs._step(values, caches, prompt[:, i], pos, offsets, i, fused)
            return caches, ops.cast(ops.argmax(ops.cast(logits, "float32"), axis=-1), "int32")

        caches, last = jax.lax.fori_loop(0, n_prompt, feed, (caches, ops.zeros((rows,), "int32")))

        def one(i, state):
            caches, last, out = state
            pos = ops.full((rows,), n_prompt + i, "int32")
            caches, logits = programs._step(values, caches, last, pos, offsets, n_prompt + i, fused)
            token = ops.cast(ops.argmax(ops.cast(logits, "float32"), axis=-1), "int32")
            return caches, token, out.at[:, i].set(token)

        return jax.lax.fori_loop(0, n_new, one, (caches, last, ops.zeros((rows, n_new), "int32")))[2]

    return jax.jit(run)


def measure(a, model, rows: int) -> dict:
    import jax
    import numpy as np
    from gen_peers import prompts
    from generate_latency import profile

    length = 1 << (a.prompt_tokens + a.new_tokens - 1).bit_length()
    variants = variant_programs(model, rows, length, a.new_tokens)
    first = variants["keras-hub layers"]
    values = [v.value for v in first.variables]  # every variant lists the model's variables in one order
    prompt = np.array(prompts(a.prompt_tokens, rows, model.backbone.vocabulary_size, 3), "int32")
    runs = {name: loop(programs, a.prompt_tokens, a.new_tokens) for name, programs in variants.items()}
    fresh = first.empty_caches(rows, length)
    out, times = {}, {name: [] for name in runs}
    for name, run in runs.items():
        if a.hlo and rows == 1:
            Path(a.hlo).mkdir(parents=True, exist_ok=True)
            text = run.lower(values, fresh, prompt).compile().as_text()
            (Path(a.hlo) / f"{name.replace(' ', '').replace(',', '_')}.hlo.txt").write_text(text)
        out[name] = {"tokens": np.asarray(run(values, fresh, prompt))}  # compile + warm
        run(values, fresh, prompt).block_until_ready()
    for _ in range(a.repeats):  # in turns
        for name, run in runs.items():
            start = time.perf_counter()
            run(values, fresh, prompt).block_until_ready()
            times[name].append(time.perf_counter() - start)
    base = out["keras-hub layers"]["tokens"]
    for name, run in runs.items():
        seconds = statistics.median(times[name])
        tokens = out[name].pop("tokens")
        agree = [int(np.argmax(np.append(r != b, True))) for r, b in zip(tokens, base)]
        out[name].update(ms_per_step=round(1000 * seconds / (a.prompt_tokens + a.new_tokens), 4),
                         tokens_per_s=round(rows * (a.prompt_tokens + a.new_tokens) / seconds, 1),
                         equal_prefix_vs_keras_hub=agree)
        if not a.no_profile and jax.default_backend() == "gpu":
            p = profile(lambda: run(values, fresh, prompt).block_until_ready(), a.prompt_tokens + a.new_tokens,
                        types.SimpleNamespace(device="gpu"), a.top)
            out[name]["profile"] = {k: p[k] for k in ("wall_ms_per_token", "busy_ms_per_token", "kernels_per_token", "top")}
        print(rows, name, {k: v for k, v in out[name].items() if k != "profile"},
              {k: out[name].get("profile", {}).get(k) for k in ("busy_ms_per_token", "kernels_per_token")}, flush=True)
    return out


def main(argv=None):
    a = parse_args(argv)
    import jax
    import keras
    from gen_peers import SHAPE_124M, SHAPE_TINY, build_model

    gpu = jax.default_backend() == "gpu"
    keras.config.set_dtype_policy(a.dtype or ("bfloat16" if gpu else "float32"))
    if a.tiny:
        a.new_tokens, a.repeats = min(a.new_tokens, 16), min(a.repeats, 2)
    model, _ = build_model(SHAPE_TINY if a.tiny else SHAPE_124M)
    results = {"backend": jax.default_backend(), "device": str(jax.devices()[0]), "dtype": keras.config.dtype_policy().name,
               "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens}
    for rows in (1, a.rows):
        results[f"rows_{rows}"] = measure(a, model, rows)
        if a.out:
            Path(a.out).write_text(json.dumps(results, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
