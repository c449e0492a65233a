"""Speed levers of the training step as same-call ablations: every kgpt2 variant in ONE process.

Issue 21, round 3. train_throughput.py runs each variant in its own
subprocess (~50 s each on an H200: imports, model build, a full XLA compile
with autotuning). Here the kgpt2 variants share one process, so imports are
paid once and XLA's autotuning results (kept per process) are reused by
every variant after the first; XLA flags are per-compile options
(`jax.jit(..., compiler_options=...)` through kgpt2.training.metrics.compile_for_training, on top of
kgpt2's own `train.triton_gemm` choice), not XLA_FLAGS, so they need no
process of their own either. The Hugging Face peers run in a second
process (`--hf`), as train_throughput.run_hf measures them.

A variant is `BASE[;EXTRA...]`:
- BASE `kgpt2:full:pad64[:SIZE]`, `kgpt2:lora:pad64` (train_throughput's
  shapes: GPT-2 124M, --batch x --seq), or `shakespeare` (the recipe
  `shakespeare_char` as it trains: 6 x 6 x 384, batch 64 x 256, dropout 0.2,
  10 steps per execution; needs --char-data);
- `section.key=value`: a kgpt2 config override (`train.fused_loss=true`);
- `xla:OPTION=VALUE`: an XLA debug option for this variant's compiles
  (`xla:xla_gpu_enable_cublaslt=true`);
- `jax:OPTION=VALUE`: a JAX config option while it builds and traces
  (`jax:jax_threefry_gpu_kernel_lowering=true`);
- `mod:MODULE.NAME=VALUE`: a kgpt2 module constant while it builds and traces
  (`mod:kgpt2.kernels.cross_entropy.BLOCK=4096`: a Pallas kernel's launch settings);
- `ln-bf16`: layer norms normalise in bf16 (float32 statistics) instead of
  Keras' float32 throughout; `dropout-rbg`: the same as
  `train.dropout_rng=rbg` (dropout masks from XLA's RngBitGenerator);
- `float8`: Dense/EinsumDense layers train in float8 (Keras'
  `quantize("float8")`: e4m3 forward, e5m2 gradients, delayed scaling;
  Hopper-class GPUs have float8 matmuls, a T4 has not);
- `gelu-remat`: each MLP's GELU under `keras.remat` (recomputed in the backward pass);
- anything else (`again`): a label only (the base measured a second time
  shows the run-to-run noise).

Named variants (ALIASES, issue 21 round 6) stand for a spec:
`shakespeare_rbg` (`train.dropout_rng=rbg`), `shakespeare_triton`
(`train.triton_gemm=on`: Triton GEMMs forced on; the base compiles with
cuBLAS, as `train.triton_gemm = "auto"` does for full training) and
`shakespeare_cublas` (`train.triton_gemm=off`: the base's own choice, spelt
out: a second base row). `--pick FILE` prints the overrides of a finished
run's variants that beat their base by `--min-gain` (for the next command).

Timing is train_throughput's: one `fit` over warm-up + timed steps with the
trainer's own step log, tokens/s from `kgpt2.training.run_logs.steady_tokens_per_s`
after the warm-up rows. `--budget` seconds: a variant starts only if the one
before it would still fit, so a cut run keeps every finished row (JSON
written after each). The peak GPU memory of a later variant is the
process's peak so far (JAX keeps one), so only the first row's is its own.

    # on the GPU machine (benchmarks/gpu_session.sh round3):
    # python benchmarks/lever_ablation.py --shards .bench/shards --tokenizer .bench/tokenizer \
    #     --char-data .bench/shakespeare_char --variants "kgpt2:full:pad64,kgpt2:full:pad64;train.fused_loss=true"
    # python benchmarks/lever_ablation.py --hf hf:full:compile,hf:lora:compile --out hf.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput as tt  # noqa: E402

SHAKESPEARE_TINY = ["model.num_layers=1", "model.num_heads=2", "model.hidden_dim=32", "model.intermediate_dim=64",
                    "model.max_sequence_length=64", "data.sequence_length=32", "train.batch_size=4"]


ALIASES = {
    "shakespeare_rbg": "shakespeare;train.dropout_rng=rbg",
    "shakespeare_triton": "shakespeare;train.triton_gemm=on",
    "shakespeare_cublas": "shakespeare;train.triton_gemm=off",
}


def parse(spec: str) -> dict:
    """"kgpt2:full:pad64;train.x=1;xla:a=b;ln-bf16" -> its parts (a named variant first becomes its spec)."""
    head, _, tail = spec.partition(";")
    spec = ALIASES.get(head, head) + (";" + tail if tail else "")
    base, *rest = spec.split(";")
    out = {"base": base, "overrides": [], "xla": {}, "jax": {}, "mod": {}, "flags": []}
    for item in rest:
        if item.startswith(("xla:", "jax:", "mod:")):
            key, value = item[4:].split("=", 1)
            out[item[:3]][key] = _value(value)
        elif "=" in item:
            out["overrides"].append(item)
        elif item == "dropout-rbg":  # round 3's Keras patch, now the config option
            out["overrides"].append("train.dropout_rng=rbg")
        else:
            out["flags"].append(item)
    return out


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        return text


def variant_config(args, v: dict):
    """(config, warm-up rows, timed rows) of a variant."""
    from dataclasses import replace

    from kgpt2.config import load_config
    from kgpt2.model.models import load_tokenizer
    from kgpt2.model.scratch import scratch_shape

    if v["base"] == "shakespeare":
        d = args.char_data
        cfg = load_config("shakespeare_char", [f"model.tokenizer={d}/tokenizer", f"data.shards={d}/shards",
                                               "run=lever-ablation"] + (SHAKESPEARE_TINY if args.tiny else [])
                          + v["overrides"])
        cfg = replace(cfg, model=scratch_shape(cfg.model, load_tokenizer(cfg.model)))  # vocabulary 0 = the tokenizer's
        return cfg, args.shakespeare_warmup, args.shakespeare_steps
    _, mode, pad, *size = v["base"].split(":")
    return tt.kgpt2_config(args, mode, int(pad[3:]), size[0] if size else "124M", v["overrides"]), \
        args.warmup, args.steps


@contextlib.contextmanager
def jax_config(options: dict):
    import jax

    saved = {k: getattr(jax.config, k) for k in options}
    for k, value in options.items():
        jax.config.update(k, value)
    try:
        yield
    finally:
        for k, value in saved.items():
            jax.config.update(k, value)


@contextlib.contextmanager
def module_constants(options: dict):
    """`{"kgpt2.kernels.cross_entropy.BLOCK": 4096}`: set while inside, restored after."""
    import importlib

    saved = []
    for path, value in options.items():
        module, name = path.rsplit(".", 1)
        target = importlib.import_module(module)
        saved.append((target, name, getattr(target, name)))
        setattr(target, name, value)
    try:
        yield
    finally:
        for target, name, value in saved:
            setattr(target, name, value)


def recomputed_gelu(backbone) -> int:
    """Each block's MLP activation under `keras.remat`: the backward recomputes GELU's tanh from the
    pre-activation instead of reading one more saved [tokens, 3072] tensor."""
    import keras

    from kgpt2 import compat

    for block in backbone.transformer_layers:
        fc = compat.decoder_block_parts(block)["fc"]
        fc.activation = keras.remat(fc.activation)
    return len(backbone.transformer_layers)


def bf16_layer_norms(backbone) -> int:
    """Every LayerNormalization of `backbone` normalises in its compute dtype, statistics in float32."""
    import jax
    import jax.numpy as jnp
    import keras

    layers = [layer for layer in backbone._flatten_layers() if isinstance(layer, keras.layers.LayerNormalization)]
    for layer in layers:
        def call(inputs, _ln=layer):
            x = inputs
            wide = x.astype("float32")
            mean = jnp.mean(wide, axis=-1, keepdims=True)
            inv = jax.lax.rsqrt(jnp.mean(jnp.square(wide - mean), axis=-1, keepdims=True) + _ln.epsilon)
            gamma, beta = (keras.ops.convert_to_tensor(w) for w in (_ln.gamma, _ln.beta))
            scale = (inv * gamma).astype(x.dtype)
            return (x - mean.astype(x.dtype)) * scale + beta.astype(x.dtype)

        layer.call = call
    return len(layers)


def run_variant(args, spec: str) -> dict:
    import keras

    from kgpt2.data.batches import WindowBatches
    from kgpt2.data.shards import ShardSet
    from kgpt2.training.devices import resolve_device

    v = parse(spec)
    cfg, warm_rows, timed_rows = variant_config(args, v)
    k = cfg.train.steps_per_execution
    device = resolve_device("auto")
    policy = device.policy(cfg.train.precision)
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    split = ShardSet(cfg.data.shards).split("train")
    seq, batch = cfg.data.sequence_length, cfg.train.batch_size
    base = WindowBatches(split.tokens, 0, split.num_tokens, sequence_length=seq, batch_size=batch, seed=0, shuffle=True)
    steps = (warm_rows + timed_rows) * k
    t0 = time.perf_counter()
    # kgpt2's own per-compile options (train.triton_gemm, ...), then the variant's on top
    with device.scope(), jax_config(v["jax"]), module_constants(v["mod"]):
        model = tt.build_kgpt2(cfg, max(steps, cfg.train.max_steps), device, v["flags"], v["xla"])
        if "ln-bf16" in v["flags"]:
            bf16_layer_norms(model.backbone)
        if "gelu-remat" in v["flags"]:
            recomputed_gelu(model.backbone)
        clock = tt.timed_fit(model, tt.Cycle(base, steps), batch * seq, warm_rows)
    tokens_s = clock["tokens_per_s"]
    out = tt._result(spec, tokens_s, batch * seq / tokens_s, compile_s=clock["first_step_s"], peak=tt._gpu_peak_bytes(),
                     device=device.description, policy=policy,
                     trainable=sum(int(keras.ops.size(w)) for w in model.trainable_weights), size=v["base"], batch=batch)
    out.update(steps_per_execution=k, timed_steps=timed_rows * k, seq=seq, variant_s=round(time.perf_counter() - t0, 1),
               loss_first=round(clock["loss_first"], 4), loss_last=round(clock["loss_last"], 4),
               step_ms_p10_p50_p90=clock["step_ms_quantiles"])
    if v["base"] != "kgpt2:full:pad64":
        out.pop("mfu", None)  # the MFU constant is the 124M shape's
    del model
    keras.backend.clear_session()
    gc.collect()
    return out


def run_all(args, specs: list[str], run_one) -> list[dict]:
    """Each spec in order while the budget lasts; JSON after every one; errors are rows."""
    results, start, last = [], time.perf_counter(), 0.0
    for spec in specs:
        left = args.budget - (time.perf_counter() - start)
        if results and left < last:
            results.append({"variant": spec, "skipped": f"budget: {left:.0f} s left, the last variant took {last:.0f} s"})
        else:
            t0 = time.perf_counter()
            try:
                results.append(run_one(args, spec))
            except Exception as e:  # noqa: BLE001 - an unknown XLA option or a failed lever is a row, not the end
                results.append({"variant": spec, "error": f"{type(e).__name__}: {str(e).strip()[:400]}"})
            last = time.perf_counter() - t0
        print(json.dumps(results[-1]), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
    return results


def table(results: list[dict]) -> str:
    """One line per variant; ratio against the first measured row of the same base (its baseline)."""
    first: dict = {}
    lines = ["variant | tokens/s | step ms | vs base | compile s | peak GB so far"]
    for r in results:
        if "tokens_per_s" not in r:
            lines.append(f"{r['variant']} | {r.get('error') or r.get('skipped')}")
            continue
        key = parse(r["variant"])["base"] if not r["variant"].startswith("hf:") else "hf"
        ref = first.setdefault(key, r)
        lines.append(f"{r['variant']} | {r['tokens_per_s']:,} | {r['step_ms']} | "
                     f"{r['tokens_per_s'] / ref['tokens_per_s']:.3f}x | {r['compile_s']} | {r['peak_gpu_gb']}")
    return "\n".join(lines)


def pick(results: list[dict], min_gain: float) -> list[str]:
    """The config overrides whose every row beat its base (the base's first row) by `min_gain`; the best per key.

        >>> rows = [{"variant": "shakespeare", "tokens_per_s": 100}, {"variant": "shakespeare_rbg", "tokens_per_s": 103},
        ...         {"variant": "shakespeare_triton", "tokens_per_s": 102}, {"variant": "shakespeare;again",
        ...         "tokens_per_s": 101}, {"variant": "shakespeare_rbg;again", "tokens_per_s": 102.5},
        ...         {"variant": "shakespeare_triton;again", "tokens_per_s": 99}]
        >>> pick(rows, 1.01)
        ['train.dropout_rng=rbg']
    """
    first, gains = {}, {}
    for r in results:
        if "tokens_per_s" not in r or r["variant"].startswith("hf:"):
            continue
        v = parse(r["variant"])
        gain = r["tokens_per_s"] / first.setdefault(v["base"], r)["tokens_per_s"]
        for override in v["overrides"]:
            gains.setdefault(override, []).append(gain)
    best = {}
    for override, seen in gains.items():
        key = override.split("=")[0]
        if min(seen) >= min_gain and min(seen) > best.get(key, (0.0, ""))[0]:
            best[key] = (min(seen), override)
    return [override for _, override in best.values()]


def run_hf_variant(args, spec: str) -> dict:
    _, mode, how = spec.split(":")
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = tt.run_hf(args, mode, how)
    out.update(variant=spec, variant_s=round(time.perf_counter() - t0, 1))
    torch._dynamo.reset()  # the next model compiles afresh, as in its own process
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", default=".bench/shards")
    p.add_argument("--tokenizer", default=".bench/tokenizer")
    p.add_argument("--char-data", default=".bench/shakespeare_char", help="tokenizer/ + shards/ of the recipe")
    p.add_argument("--variants", default="kgpt2:full:pad64")
    p.add_argument("--hf", help="comma-separated hf:MODE:HOW peers, run in this process instead (torch)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--shakespeare-warmup", type=int, default=5, help="rows of 10 steps")
    p.add_argument("--shakespeare-steps", type=int, default=30, help="rows of 10 steps")
    p.add_argument("--budget", type=float, default=1e9, help="seconds for all variants")
    p.add_argument("--tiny", action="store_true", help="tiny shapes: a CPU dry run of every code path")
    p.add_argument("--out")
    p.add_argument("--pick", metavar="FILE", help="print the overrides that beat their base in FILE (a run's --out)")
    p.add_argument("--min-gain", type=float, default=1.01, help="with --pick: tokens/s ratio to the base")
    args = p.parse_args(argv)
    if args.pick:
        with open(args.pick) as f:
            print(" ".join(pick(json.load(f), args.min_gain)))
        return
    os.environ.setdefault("KERAS_BACKEND", "jax")
    if args.tiny:
        tt.use_tiny_shapes()
    if args.hf:
        results = run_all(args, args.hf.split(","), run_hf_variant)
    else:
        results = run_all(args, _split(args.variants), run_variant)
    print("\n" + table(results))


def _split(text: str) -> list[str]:
    """Comma-separated variants; a comma inside one (an option's value) stays in it."""
    names = []
    for piece in text.split(","):
        if names and not piece.startswith(("kgpt2:", "shakespeare")):
            names[-1] += "," + piece
        elif piece:
            names.append(piece)
    return names


if __name__ == "__main__":
    main()
