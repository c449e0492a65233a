"""Training throughput and peak memory on one GPU: kgpt2's real training path vs Hugging Face.

Each variant runs in its own subprocess (a clean GPU, JAX and PyTorch never
share one process) and prints one JSON line; the parent prints them all and
the ratios against the Hugging Face peers measured in the same run.

- kgpt2 variants go through kgpt2's own path: shards written by
  `kgpt2 prepare`, `WindowBatches` fed to `fit` by grain, `build_causal_lm`
  (vocabulary padding, LoRA), `make_optimizer` (AdamW, warmup + cosine,
  clipnorm 1.0), `compile_lm` (masked loss + weighted metrics) and the
  device's precision policy (mixed_bfloat16 on an H100).
- HF variants: transformers GPT2LMHeadModel (sdpa attention, dropout 0 like
  kgpt2), bf16 autocast, fused torch AdamW, grad-norm clipping 1.0, eager or
  torch.compile; + PEFT LoRA (c_attn, r 8, alpha 32, dropout 0.1), and for
  the adapter comparison (`--adapters`) PEFT's LoRA / rsLoRA / DoRA /
  all-linear on c_attn (all-linear: c_attn, c_proj, c_fc) with the same r,
  alpha and dropout as the kgpt2 variants beside them, eager and compiled.
  kgpt2's adapters are PEFT's maths (kgpt2.model.adapters); on query+key+value they
  equal PEFT's c_attn adapter, so those are the like-for-like pairs. Every
  line carries its trainable-parameter count.

GPT-2 124M shape, random weights, batch 16 x 1,024, 5 warm-up + 30 timed
steps. Tokens/s counts real (non-padding) target tokens. MFU = tokens/s x
800.6 MFLOP/token (6N + attention for GPT-2 124M at T=1,024) / 989 TFLOP/s
(H100 dense bf16).

    # on the GPU machine (see docs/benchmarks.md for the exact command):
    # python benchmarks/train_throughput.py --shards .bench/shards --tokenizer .bench/tokenizer
    # python benchmarks/train_throughput.py --memory --shards ... --tokenizer ...
    # python benchmarks/train_throughput.py --stage --shards ... --tokenizer ...
    # python benchmarks/train_throughput.py --adapters --shards ... --tokenizer ...
    # on a CPU, end to end at a tiny shape (a check that every variant runs, not a measurement):
    # python benchmarks/train_throughput.py --adapters --tiny --shards ... --tokenizer ...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

FLOPS_PER_TOKEN_124M = 800.6e6
PEAK_FLOPS = 989e12
SIZES = {  # GPT-2 shapes: layers, heads, hidden
    "124M": (12, 12, 768),
    "355M": (24, 16, 1024),
    "774M": (36, 20, 1280),
    "1.5B": (48, 25, 1600),
}
TINY_SIZES = {  # --tiny: a CPU dry run of every code path, same names
    "124M": (2, 2, 64), "355M": (2, 2, 96), "774M": (3, 2, 128), "1.5B": (3, 2, 160),
}
THROUGHPUT_VARIANTS = [
    "kgpt2:full:pad64", "kgpt2:lora:pad64", "kgpt2:full:pad0", "kgpt2:lora:pad0",
    "hf:full:eager", "hf:full:compile", "hf:lora:eager",
]
# kgpt2 adapter settings (r 8, alpha 32, dropout 0.1, as PEFT's peers below).
QKV = "lora.targets=['query','key','value']"
ADAPTER_SETTINGS = "lora.rank=8;lora.alpha=32;lora.dropout=0.1"
ADAPTER_VARIANTS = [
    "kgpt2:full:pad64",
    f"kgpt2:lora:pad64;{ADAPTER_SETTINGS};{QKV}",
    f"kgpt2:lora:pad64;{ADAPTER_SETTINGS};{QKV};lora.use_rslora=true",
    f"kgpt2:lora:pad64;{ADAPTER_SETTINGS};{QKV};lora.use_dora=true",
    f"kgpt2:lora:pad64;{ADAPTER_SETTINGS};lora.targets=['all-linear']",
    "hf:full:eager", "hf:full:compile",
    "hf:lora:eager", "hf:lora:compile", "hf:rslora:eager", "hf:rslora:compile",
    "hf:dora:eager", "hf:dora:compile", "hf:lora-all:eager", "hf:lora-all:compile",
]
# PEFT's settings for each hf adapter mode.
PEFT_MODES = {
    "lora": {"target_modules": ["c_attn"]},
    "rslora": {"target_modules": ["c_attn"], "use_rslora": True},
    "dora": {"target_modules": ["c_attn"], "use_dora": True},
    "lora-all": {"target_modules": ["c_attn", "c_proj", "c_fc"]},
}


def use_tiny_shapes() -> None:
    SIZES.update(TINY_SIZES)


def _gpu_peak_bytes() -> int:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return int(stats.get("peak_bytes_in_use", 0))


class Cycle:
    """`n` batches of a batch source, wrapping around (for a fixed step count)."""

    def __init__(self, source, n: int, offset: int = 0):
        self.source, self.n, self.offset = source, n, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.source[(i + self.offset) % len(self.source)]


def kgpt2_config(args, mode: str, pad: int, size: str = "124M", overrides=()):
    from kgpt2.config import load_config

    layers, heads, hidden = SIZES[size]
    return load_config(None, [
        "model.preset=scratch", f"model.tokenizer={args.tokenizer}", f"data.shards={args.shards}",
        f"model.num_layers={layers}", f"model.num_heads={heads}", f"model.hidden_dim={hidden}",
        f"model.intermediate_dim={4 * hidden}", f"model.pad_vocabulary_to={pad}",
        f"model.max_sequence_length={max(args.seq, 64)}",
        f"lora.enabled={'false' if mode == 'full' else 'true'}",
        # int8-lora: kgpt2's frozen int8 base under LoRA (kgpt2.model.quantize)
        f'model.quantize="{"int8" if mode == "int8-lora" else ""}"',
        f"train.batch_size={args.batch}", f"data.sequence_length={args.seq}",
    ] + list(overrides))


def build_kgpt2(cfg, total_steps: int, device, extra=(), xla_options=None):
    """kgpt2's model + optimizer for `cfg`, compiled as `kgpt2 train` compiles it (kgpt2.training.metrics.compile_for_training).

    `extra` flags (ablations): `float8` trains the Dense/EinsumDense layers in float8 (Keras'
    `quantize("float8")`, delayed scaling; the tied embedding and logits stay in the policy's dtype);
    `token-loss` adds validation's token-loss metric to the step. `xla_options` go on top of kgpt2's own.
    """
    from kgpt2.model.models import build_causal_lm
    from kgpt2.training.metrics import compile_for_training, compile_lm
    from kgpt2.training.optimizer import make_optimizer

    model = build_causal_lm(cfg)
    if "float8" in extra:
        model.quantize("float8")
    optimizer, model.kgpt2_schedule = make_optimizer(cfg, total_steps)  # the step log reads the schedule
    compile_for_training(model, cfg, optimizer, device, model.backbone.hidden_dim, xla_options)
    if "token-loss" in extra:  # recompiled with the metric; the XLA options stay with the model
        compile_lm(model, optimizer, token_loss=True, steps_per_execution=cfg.train.steps_per_execution)
    return model


def timed_fit(model, batches, tokens_per_step: int, warmup: int) -> dict:
    """`fit` once over `batches` with the staged trainer's own step log; time it as the trainer is timed.

    tokens/s: `kgpt2.training.run_logs.steady_tokens_per_s` over the steps after
    `warmup`, on the step log's device-synchronised clock, exactly what
    `run_stage` reads from a real run's steps.csv.
    """
    import csv
    import tempfile

    from kgpt2.data.batches import to_dataset
    from kgpt2.training.run_logs import StepLog, steady_tokens_per_s

    folder = tempfile.mkdtemp(prefix="kgpt2-bench-")
    log = StepLog(f"{folder}/steps.csv", tensorboard_dir=f"{folder}/tb")
    log._tensorboard = False  # the benchmark times training, not TensorBoard writes
    schedule = model.kgpt2_schedule
    t0 = time.time()
    model.fit(to_dataset(batches), epochs=1, verbose=0, shuffle=False,
              callbacks=[log.callback(0, schedule, 0, tokens_per_step)])
    wall = time.time() - t0
    with open(f"{folder}/steps.csv") as f:
        rows = list(csv.DictReader(f))
    first = min(float(r["time"]) for r in rows)
    ordered = sorted(rows, key=lambda r: int(r["step"]))
    losses = [float(r["loss"]) for r in ordered]
    # each timed step's own interval: a clock-bound or host-bound step shows in the spread, not the mean
    gaps = sorted(1e3 * (float(b["time"]) - float(a["time"])) for a, b in zip(ordered[warmup - 1:], ordered[warmup:]))
    # first and last step's training loss: a lever that changes the numerics (float8) must still train alike
    return {"tokens_per_s": steady_tokens_per_s(rows, tokens_per_step, warmup), "first_step_s": first - t0,
            "fit_wall_s": wall, "steps": len(rows), "loss_first": losses[0], "loss_last": losses[-1],
            "step_ms_quantiles": [round(gaps[int(q * (len(gaps) - 1))], 2) for q in (0.1, 0.5, 0.9)] if gaps else []}


def run_kgpt2(args, mode: str, pad: int, size: str = "124M", extra=()) -> dict:
    import keras

    from kgpt2.data.batches import WindowBatches, to_dataset
    from kgpt2.data.shards import ShardSet
    from kgpt2.training.devices import resolve_device

    overrides = [e for e in extra if "=" in e]
    cfg = kgpt2_config(args, mode, pad, size, overrides)
    device = resolve_device("auto")
    policy = device.policy(cfg.train.precision)
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    split = ShardSet(cfg.data.shards).split("train")
    base = WindowBatches(split.tokens, 0, split.num_tokens, sequence_length=args.seq,
                         batch_size=args.batch, seed=0, shuffle=True)
    timed = Cycle(base, args.steps, offset=args.warmup)
    real = sum(float(timed[i][2].sum()) for i in range(len(timed))) / (args.steps * args.batch * args.seq)
    tokens_per_step = args.batch * args.seq
    with device.scope():
        model = build_kgpt2(cfg, 2 * args.warmup + 2 * args.steps, device, extra)
        # One fit over warm-up + timed steps, timed by the step log (the trainer's method) ...
        clock = timed_fit(model, Cycle(base, args.warmup + args.steps), tokens_per_step, args.warmup)
        # ... and the old method on the same model: a second fit of the timed steps, timed around the call
        # (includes fit's start-up and end: data pipeline, callbacks, state sync; the 9% of issue 21).
        t0 = time.perf_counter()
        model.fit(to_dataset(timed), epochs=1, verbose=0, shuffle=False)
        fit_call_s = time.perf_counter() - t0
    tokens_s = clock["tokens_per_s"]
    trainable = sum(int(keras.ops.size(v)) for v in model.trainable_weights)
    name = " ".join([f"kgpt2 {mode} pad{pad} {size}", *extra])
    return _result(name, tokens_s, tokens_per_step / tokens_s,
                   compile_s=clock["first_step_s"], peak=_gpu_peak_bytes(),
                   device=device.description, policy=policy, trainable=trainable, size=size, batch=args.batch,
                   fit_call_tokens_per_s=round(args.steps * tokens_per_step / fit_call_s),
                   real_target_fraction=round(real, 4))


def run_hf(args, mode: str, how: str) -> dict:
    import torch
    import transformers

    torch.manual_seed(0)
    layers, heads, hidden = SIZES["124M"]
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: the --tiny dry run
    config = transformers.GPT2Config(n_positions=max(args.seq, 64), n_embd=hidden, n_layer=layers, n_head=heads,
                                     vocab_size=50257, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    config._attn_implementation = "sdpa"  # torch's fused attention (flash with dropout 0)
    model = transformers.GPT2LMHeadModel(config).to(dev)
    if mode in PEFT_MODES:
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(
            r=8, lora_alpha=32, lora_dropout=0.1, fan_in_fan_out=True, **PEFT_MODES[mode]))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.01, fused=dev == "cuda")
    forward = torch.compile(model) if how == "compile" else model
    x = torch.randint(0, 50257, (args.batch, args.seq + 1), device=dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def step():
        with torch.autocast(dev, dtype=torch.bfloat16):
            logits = forward(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    step()
    sync()
    first_s = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    float(loss)
    sync()
    timed_s = time.perf_counter() - t0
    step_s = timed_s / args.steps
    return _result(f"hf {mode} {how}", args.batch * args.seq / step_s, step_s, compile_s=first_s - step_s,
                   peak=int(torch.cuda.max_memory_allocated()) if dev == "cuda" else 0,
                   device=torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
                   policy="bf16 autocast", trainable=sum(p.numel() for p in params), size="124M",
                   batch=args.batch, versions={"torch": torch.__version__, "transformers": transformers.__version__})


def _result(name, tokens_s, step_s, *, compile_s, peak, device, policy, trainable, size, batch, **extra):
    out = {"variant": name, "tokens_per_s": round(tokens_s), "step_ms": round(step_s * 1e3, 2),
           "compile_s": round(compile_s, 1), "peak_gpu_gb": round(peak / 1e9, 2), "device": device,
           "precision": policy, "trainable_params": trainable, "size": size, "batch": batch}
    if size == "124M":
        out["mfu"] = round(tokens_s * FLOPS_PER_TOKEN_124M / PEAK_FLOPS, 3)
    out.update(extra)
    return out


def run_stage(args) -> dict:
    """kgpt2's staged trainer on one real stage: fit + validation + checkpoint + export.

    The trainer's step logger is async-safe and checkpoints happen between
    `fit` calls, so Keras does not wait for every step (kgpt2/training/run_logs.py).
    """
    import csv
    import tempfile

    from kgpt2.config import load_config
    from kgpt2.train import train
    from kgpt2.training.run_logs import steady_tokens_per_s

    root = tempfile.mkdtemp()
    layers, heads, hidden = SIZES["124M"]
    cfg = load_config(None, list(args.stage_set) + [
        "model.preset=scratch", f"model.tokenizer={args.tokenizer}", f"data.shards={args.shards}",
        f"model.num_layers={layers}", f"model.num_heads={heads}", f"model.hidden_dim={hidden}",
        f"model.intermediate_dim={4 * hidden}", f"model.max_sequence_length={max(args.seq, 64)}",
        "lora.enabled=false", f"train.batch_size={args.batch}", f"data.sequence_length={args.seq}",
        # the benchmark's steps: warm-up + timed, in one fit call (then validation, checkpoint, export)
        "train.stages=[\"rest\"]", f"train.max_steps={args.warmup + args.steps}",
        "train.eval_batches=4", f"checkpoints_root={root}", "run=stage"])
    t0 = time.perf_counter()
    result = train(cfg, verbose=0)
    wall_s = time.perf_counter() - t0
    with open(f"{root}/stage/logs/steps.csv") as f:
        rows = list(csv.DictReader(f))
    tokens_s = steady_tokens_per_s(rows, args.batch * args.seq, args.warmup)  # the benchmark's method
    return {"variant": " ".join(["kgpt2 staged trainer, full, one stage", *args.stage_set]), "steps": len(rows),
            "steady_tokens_per_s": round(tokens_s), "stage_wall_s": round(wall_s, 1),
            "global_step": result.global_step}


def split_variant(name: str) -> tuple[str, list[str], dict]:
    """"kgpt2:full:pad64;train.train_accuracy=true;env:XLA_FLAGS=..." -> (base, extras, env).

    Extras after the base name are kgpt2 config overrides (key=value), the
    flag `token-loss` (compile the training step with the token-loss metric
    too, as kgpt2 did before), or `env:NAME=VALUE` for the subprocess.
    """
    base, *rest = name.split(";")
    env = dict(e[4:].split("=", 1) for e in rest if e.startswith("env:"))
    return base, [e for e in rest if not e.startswith("env:")], env


def parse_variants(text: str) -> list[str]:
    """Comma-separated variants; a comma inside one (an XLA flag's value) stays in it."""
    names = []
    for piece in text.split(","):
        if names and not piece.startswith(("kgpt2:", "hf:", "stage")):
            names[-1] += "," + piece
        elif piece:
            names.append(piece)
    return names


def run_variant(args, name: str) -> dict:
    name, extra, _ = split_variant(name)
    parts = name.split(":")
    if parts[0] == "kgpt2":
        return run_kgpt2(args, parts[1], int(parts[2][3:]), parts[3] if len(parts) > 3 else "124M", extra)
    if parts[0] == "hf":
        return run_hf(args, parts[1], parts[2])
    if parts[0] == "stage":
        return run_stage(args)
    raise SystemExit(f"unknown variant {name}")


def spawn(args, name: str, batch: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--variant", name, "--shards", args.shards, "--tokenizer", args.tokenizer,
           "--batch", str(batch or args.batch), "--seq", str(args.seq), "--warmup", str(args.warmup),
           "--steps", str(args.steps)] + (["--tiny"] if args.tiny else [])
    cmd += [f"--stage-set={s}" for s in args.stage_set]
    env = dict(os.environ, **split_variant(name)[2])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.variant_timeout)
    except subprocess.TimeoutExpired:
        return {"variant": name, "batch": batch or args.batch, "error": f"timed out after {args.variant_timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"variant": name, "batch": batch or args.batch, "error": " | ".join(tail)[-600:]}
    out = json.loads(lines[-1])
    if split_variant(name)[2]:
        out["variant"] += " " + " ".join(f"{k}={v}" for k, v in split_variant(name)[2].items())
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def _peer(variant: str, by_name: dict):
    """PEFT's like-for-like line for a kgpt2 adapter variant (compiled if measured)."""
    if not variant.startswith("kgpt2 lora"):
        return None
    mode = ("dora" if "use_dora=true" in variant else "rslora" if "use_rslora=true" in variant
            else "lora-all" if "all-linear" in variant else "lora")
    return by_name.get(f"hf {mode} compile") or by_name.get(f"hf {mode} eager")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--variant", help="run one variant in this process (used by the parent)")
    p.add_argument("--variants", default=",".join(THROUGHPUT_VARIANTS))
    p.add_argument("--memory", action="store_true", help="peak memory per size x mode at batch 1 and 2")
    p.add_argument("--memory-sizes", default="124M,355M,774M")
    p.add_argument("--stage", action="store_true", help="also time one real stage of the staged trainer")
    p.add_argument("--adapters", action="store_true", help="LoRA / rsLoRA / DoRA / all-linear / full vs PEFT")
    p.add_argument("--out", help="write all results here as JSON")
    p.add_argument("--stage-set", action="append", default=[], help="a config override for the --stage run")
    p.add_argument("--variant-timeout", type=int, default=240, help="seconds per variant subprocess")
    p.add_argument("--tiny", action="store_true", help="tiny shapes: a CPU dry run of every code path")
    s = p.add_argument_group("--memory-search: the largest batch under a capped allocator (benchmarks/memory_search.py)")
    s.add_argument("--memory-search", action="store_true")
    s.add_argument("--search-one", help="size:mode:remat|plain, in this process (used by the parent)")
    s.add_argument("--cap-gb", type=float, default=15.0, help="allocator cap in GiB (a T4's 15,360 MiB, less CUDA's context)")
    s.add_argument("--max-batch", type=int, default=512)
    s.add_argument("--max-probes", type=int, default=6)
    s.add_argument("--search-specs", default="", help="SIZE:MODE:plain|remat,... instead of sizes x modes x remat")
    s.add_argument("--resolution", type=float, default=0.1, help="stop when fails - fits <= this x fits")
    s.add_argument("--jobs", type=int, default=6, help="searches at once (each capped at --cap-gb)")
    s.add_argument("--search-timeout", type=int, default=300, help="seconds for all the searches")
    s.add_argument("--search-modes", default="full,lora")
    s.add_argument("--autotune-level", type=int, default=0, help="XLA autotuning of the search's compiles (-1: XLA's default)")
    args = p.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    if args.tiny:
        use_tiny_shapes()
    if args.search_one:
        import memory_search

        memory_search.search_one(args, args.search_one)
        return
    if args.adapters and args.variants == ",".join(THROUGHPUT_VARIANTS):
        args.variants = ",".join(ADAPTER_VARIANTS)
    if args.variant:
        print(json.dumps(run_variant(args, args.variant)), flush=True)
        return
    if args.memory_search:
        import memory_search

        specs = [f"{size}:{mode}:{remat}" for remat in ("plain", "remat") for size in args.memory_sizes.split(",")
                 for mode in args.search_modes.split(",")]
        if args.search_specs:  # e.g. "355M:full:plain,774M:lora:remat": only these
            specs = args.search_specs.split(",")
        memory_search.run_all(args, specs)
        return
    results = []
    names = [] if args.memory else parse_variants(args.variants)
    for name in names + (["stage"] if args.stage else []):
        results.append(spawn(args, name))
        print(json.dumps(results[-1]), flush=True)
        if args.out:  # after every variant: a call cut short by `timeout` keeps what it measured
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
    if args.memory:
        args.warmup, args.steps = 1, 1
        for size in args.memory_sizes.split(","):
            for mode in ("full", "lora", "int8-lora"):
                for batch in (1, 2):
                    results.append(spawn(args, f"kgpt2:{mode}:pad64:{size}", batch))
                    print(json.dumps(results[-1]), flush=True)
    by_name = {r["variant"]: r for r in results if "tokens_per_s" in r}
    peers = {"full": by_name.get("hf full compile") or by_name.get("hf full eager"),
             "lora": by_name.get("hf lora compile") or by_name.get("hf lora eager")}  # the fair LoRA peer: compiled
    print("\nvariant | tokens/s | step ms | MFU | peak GB | compile s | trainable | vs HF")
    for r in results:
        if "tokens_per_s" not in r:
            if "error" in r:
                print(f"{r['variant']} | {r['error']}")
            continue
        peer = _peer(r["variant"], by_name) or peers["lora" if " lora" in r["variant"] else "full"]
        ratio = f"{r['tokens_per_s'] / peer['tokens_per_s']:.2f}x {peer['variant']}" if peer else "-"
        print(f"{r['variant']} b{r['batch']} | {r['tokens_per_s']:,} | {r['step_ms']} | {r.get('mfu', '-')} | "
              f"{r['peak_gpu_gb']} | {r['compile_s']} | {r['trainable_params']:,} | {ratio}")
    loop = by_name.get("kgpt2 full pad64 124M")
    for r in results:
        if "steady_tokens_per_s" in r and loop:
            r["vs_benchmark_loop"] = round(r["steady_tokens_per_s"] / loop["tokens_per_s"], 3)
            print(f"{r['variant']}: {r['steady_tokens_per_s']:,} tokens/s = {r['vs_benchmark_loop']}x the loop "
                  f"(same method: kgpt2.training.run_logs.steady_tokens_per_s over steps {args.warmup + 1}..{args.warmup + args.steps})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
