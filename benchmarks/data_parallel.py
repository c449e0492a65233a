"""Data-parallel scaling of kgpt2's staged trainer: tokens/s on 1 vs N devices.

Each device count runs in its own subprocess (fresh JAX, a clean GPU set)
through kgpt2's real path: `train(cfg)` with `train.devices = N`, i.e.
`keras.distribution.DataParallel` over N devices, shards fed by grain, the
step CSV's timestamps giving the steady-state rate (after `--warmup` steps of
compile and warm-up). Weak scaling: the per-device batch stays fixed, so the
global batch (train.batch_size) is per-device batch x N. Scaling = tokens/s
on N devices / tokens/s on 1, measured in the same invocation on the same
machine. Goals: >= 1.90x on 2 GPUs, >= 3.7x on 4, >= 7.2x on 8 (issue 22).

`--mesh data:2,model:2;data:4` adds runs with sharded weights (`train.mesh`,
keras.distribution.ModelParallel with kgpt2's GPT-2 layout map): each mesh
takes data x model devices, the per-device batch applies per data shard.
`--size 774M` / `1.5B` are GPT-2 large / XL shapes; peak device memory is
reported where the backend knows it (GPUs).

GPT-2 124M shape (scratch, random weights), full fine-tuning, sequence 1,024,
the device's precision policy (mixed_bfloat16 on H100/H200).

    # on a 2-GPU machine (docs/benchmarks.md has the exact command):
    # python benchmarks/data_parallel.py --shards .bench/shards --tokenizer .bench/tokenizer --devices 1,2
    # CPU smoke test of the same path on virtual devices:
    # XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax \
    #   python benchmarks/data_parallel.py --shards S --tokenizer T --devices 1,2 --size tiny --seq 64 \
    #   --per-device-batch 4 --warmup 3 --steps 10 --device cpu
    # sharded weights, same smoke test on 4 virtual devices:
    # XLA_FLAGS=--xla_force_host_platform_device_count=4 ... --devices 1 --mesh "data:4;data:2,model:2" --size tiny ...
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

SIZES = {"124M": (12, 12, 768), "774M": (36, 20, 1280), "1.5B": (48, 25, 1600), "tiny": (2, 2, 64)}  # layers, heads, hidden


def run_one(args) -> dict:
    """Train `--warmup + --steps` steps on `--devices` devices in this process; one JSON result."""
    from kgpt2.config import load_config
    from kgpt2.train import train
    from kgpt2.training.distribution import parse_mesh
    from kgpt2.training.run_logs import steady_tokens_per_s

    layers, heads, hidden = SIZES[args.size]
    n = int(args.devices)
    data, model = parse_mesh(args.mesh) or (n, 1)
    placement = [f'train.mesh="{args.mesh}"'] if args.mesh else [f'train.devices="{n}"']
    root = tempfile.mkdtemp(prefix="kgpt2-dp-")
    # --warmup/--steps count logged rows: one per execution of `train.steps_per_execution` steps
    per_row = next((int(s.split("=", 1)[1]) for s in args.set if s.startswith("train.steps_per_execution=")), 1)
    cfg = load_config(None, [
        "model.preset=scratch", f"model.tokenizer={args.tokenizer}", f"data.shards={args.shards}",
        f"model.num_layers={layers}", f"model.num_heads={heads}", f"model.hidden_dim={hidden}",
        f"model.intermediate_dim={4 * hidden}", f"model.max_sequence_length={max(args.seq, 64)}",
        f"data.sequence_length={args.seq}", "lora.enabled=false",
        f"train.batch_size={args.per_device_batch * data}", *placement, f"train.device={args.device}",
        'train.stages=["rest"]', "train.epochs=0", f"train.max_steps={(args.warmup + args.steps) * per_row}",
        "train.eval_batches=0", f"checkpoints_root={root}", "run=dp", *args.set])
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
    return {"devices": data * model, "mesh": args.mesh or f"replicated:{n}", "peak_bytes_per_device": _peak_memory(),
            "global_batch": cfg.train.batch_size, "per_device_batch": args.per_device_batch,
            "seq": args.seq, "size": args.size, "steps": len(rows), "timed_steps": steady,
            "tokens_per_s": round(tokens_s), "wall_s": round(wall_s, 1), "global_step": result.global_step}


def _peak_memory():
    """The largest peak of any local device, where the backend reports it (GPUs); None on CPU."""
    import jax

    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
    peaks = [p for p in peaks if p]
    return max(peaks) if peaks else None


def _runs(args) -> list[list[str]]:
    """One argument list per run: each device count replicated, then each mesh."""
    runs = [["--devices", d] for d in args.devices.split(",") if d]
    return runs + [["--devices", "1", "--mesh", m] for m in (args.mesh or "").split(";") if m]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", required=True, help="shard directory written by `kgpt2 prepare`")
    p.add_argument("--tokenizer", required=True, help="the shards' tokenizer directory")
    p.add_argument("--devices", default="1,2", help="device counts to compare, e.g. 1,2")
    p.add_argument("--per-device-batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--mesh", default="", help='meshes to add, ";"-separated, e.g. "data:8;data:4,model:2"')
    p.add_argument("--size", choices=sorted(SIZES), default="124M")
    p.add_argument("--device", default="auto", help="train.device: auto (GPUs if any), gpu or cpu")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--one", action="store_true", help="run one device count in this process (used by the parent)")
    p.add_argument("--out", help="write the results here as JSON")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a kgpt2 config override for every run (repeatable), e.g. train.steps_per_execution=4")
    p.add_argument("--log-dir", help="keep each run's whole stderr here, one file per run")
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return
    results = []
    argv = list(argv if argv is not None else sys.argv[1:])
    fixed = [a for i, a in enumerate(argv) if a not in ("--devices", "--mesh", "--out", "--log-dir")
             and (i == 0 or argv[i - 1] not in ("--devices", "--mesh", "--out", "--log-dir"))]
    for run in _runs(args):
        cmd = [sys.executable, __file__, "--one", *fixed, *run]
        proc = subprocess.run(cmd, env=dict(os.environ, KERAS_BACKEND="jax"), capture_output=True, text=True)
        if args.log_dir:  # the whole stderr of each run: XLA's log lines bury a failure's cause
            os.makedirs(args.log_dir, exist_ok=True)
            with open(os.path.join(args.log_dir, "_".join(run).replace("-", "").replace(":", "").replace(",", "_") + ".log"), "w") as f:
                f.write(proc.stderr)
        if proc.returncode:  # report it and go on: the other runs' figures still count
            errors = [line for line in proc.stderr.splitlines() if "Error" in line or "error" in line]
            print(f"{' '.join(run)} failed (exit {proc.returncode}): {' | '.join(errors[-3:])[-1500:]}", flush=True)
            continue
        results.append(json.loads(proc.stdout.split("RESULT ", 1)[1]))
        print(json.dumps(results[-1]), flush=True)
    if not results:
        sys.exit("every run failed")
    base = results[0]["tokens_per_s"]
    for r in results:
        r["scaling_vs_first"] = round(r["tokens_per_s"] / base, 3)
    print(f"{'mesh':>16} {'devices':>7} {'global batch':>12} {'tokens/s':>10} {'scaling':>8}")
    for r in results:
        print(f"{r['mesh']:>16} {r['devices']:>7} {r['global_batch']:>12} {r['tokens_per_s']:>10,} {r['scaling_vs_first']:>7.3f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
