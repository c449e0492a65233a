"""Data-parallel scaling of kgpt2's staged trainer: tokens/s on 1 vs N devices.

Each device count runs in its own subprocess (fresh JAX, a clean GPU set)
through kgpt2's real path: `train(cfg)` with `train.devices = N`, i.e.
`keras.distribution.DataParallel` over N devices, shards fed by grain, the
step CSV's timestamps giving the steady-state rate (after `--warmup` steps of
compile and warm-up). Weak scaling: the per-device batch stays fixed, so the
global batch (train.batch_size) is per-device batch x N. Scaling = tokens/s
on N devices / tokens/s on 1, measured in the same invocation on the same
machine. Goal (issue 11): >= 1.85x on 2 GPUs.

GPT-2 124M shape (scratch, random weights), full fine-tuning, sequence 1,024,
the device's precision policy (mixed_bfloat16 on H100/H200).

    # on a 2-GPU machine (docs/benchmarks.md has the exact command):
    # python benchmarks/data_parallel.py --shards .bench/shards --tokenizer .bench/tokenizer --devices 1,2
    # CPU smoke test of the same path on virtual devices:
    # XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax \
    #   python benchmarks/data_parallel.py --shards S --tokenizer T --devices 1,2 --size tiny --seq 64 \
    #   --per-device-batch 4 --warmup 3 --steps 10 --device cpu
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

SIZES = {"124M": (12, 12, 768), "tiny": (2, 2, 64)}  # layers, heads, hidden


def run_one(args) -> dict:
    """Train `--warmup + --steps` steps on `--devices` devices in this process; one JSON result."""
    from kgpt2.config import load_config
    from kgpt2.run_logs import steady_tokens_per_s
    from kgpt2.train import train

    layers, heads, hidden = SIZES[args.size]
    n = int(args.devices)
    root = tempfile.mkdtemp(prefix="kgpt2-dp-")
    cfg = load_config(None, [
        "model.preset=scratch", f"model.tokenizer={args.tokenizer}", f"data.shards={args.shards}",
        f"model.num_layers={layers}", f"model.num_heads={heads}", f"model.hidden_dim={hidden}",
        f"model.intermediate_dim={4 * hidden}", f"model.max_sequence_length={max(args.seq, 64)}",
        f"data.sequence_length={args.seq}", "lora.enabled=false",
        f"train.batch_size={args.per_device_batch * n}", f'train.devices="{n}"', f"train.device={args.device}",
        'train.stages=["rest"]', "train.epochs=0", f"train.max_steps={args.warmup + args.steps}",
        "train.eval_batches=0", f"checkpoints_root={root}", "run=dp"])
    t0 = time.perf_counter()
    result = train(cfg, verbose=0)
    wall_s = time.perf_counter() - t0
    with open(f"{root}/dp/logs/steps.csv") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["step"]))  # flushed from a worker thread
    steady = len(rows) - args.warmup
    if steady < 1:
        raise SystemExit(f"only {len(rows)} steps ran; the shards are too small for --warmup + --steps")
    # the staged trainer's and train_throughput.py's one timing method
    tokens_s = steady_tokens_per_s(rows, cfg.train.batch_size * args.seq, args.warmup)
    return {"devices": n, "global_batch": cfg.train.batch_size, "per_device_batch": args.per_device_batch,
            "seq": args.seq, "size": args.size, "steps": len(rows), "timed_steps": steady,
            "tokens_per_s": round(tokens_s), "wall_s": round(wall_s, 1), "global_step": result.global_step}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", required=True, help="shard directory written by `kgpt2 prepare`")
    p.add_argument("--tokenizer", required=True, help="the shards' tokenizer directory")
    p.add_argument("--devices", default="1,2", help="device counts to compare, e.g. 1,2")
    p.add_argument("--per-device-batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--size", choices=sorted(SIZES), default="124M")
    p.add_argument("--device", default="auto", help="train.device: auto (GPUs if any), gpu or cpu")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--one", action="store_true", help="run one device count in this process (used by the parent)")
    p.add_argument("--out", help="write the results here as JSON")
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return
    results = []
    for n in [int(x) for x in args.devices.split(",")]:
        cmd = [sys.executable, __file__, "--one", "--devices", str(n)] + [
            a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--devices", args.devices)]
        cmd = [c for c in cmd if c != "--out" and c != args.out] if args.out else cmd
        env = dict(os.environ, KERAS_BACKEND="jax")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"devices={n} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.split("RESULT ", 1)[1]))
        print(json.dumps(results[-1]), flush=True)
    base = results[0]["tokens_per_s"]
    for r in results:
        r["scaling_vs_first"] = round(r["tokens_per_s"] / base, 3)
    print(f"{'devices':>7} {'global batch':>12} {'tokens/s':>10} {'scaling':>8}")
    for r in results:
        print(f"{r['devices']:>7} {r['global_batch']:>12} {r['tokens_per_s']:>10,} {r['scaling_vs_first']:>7.3f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
