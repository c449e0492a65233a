"""The largest training batch that fits a 16 GB GPU (Colab's T4), measured on a bigger GPU.

For each GPT-2 size x (full, LoRA) x (train.remat off, on), one subprocess
caps JAX's allocator (XLA_PYTHON_CLIENT_MEM_FRACTION = cap / the card's
total, so an H200 behaves like a 16 GB card), builds kgpt2's model as the
trainer does (kgpt2's path: build_causal_lm, make_optimizer, compile_lm,
the device's precision) and trains two real steps at batch after batch:
25% steps from kgpt2.memory's estimate, then bisecting, until the
bracket [fits, fails] is within `--resolution`. An out-of-memory error is a
"fails"; the model is rebuilt after one. The caps let several searches
share one big card at once (`--jobs`).

    # on the GPU machine (benchmarks/gpu_session.sh round2):
    # python benchmarks/train_throughput.py --memory-search --shards .bench/shards --tokenizer .bench/tokenizer
    # CPU dry run (no out-of-memory there: the search stops at --max-batch):
    # python benchmarks/train_throughput.py --tiny --memory-search --shards ... --tokenizer ...
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def gpu_total_bytes() -> int | None:
    """The first GPU's total memory from nvidia-smi, without starting JAX in the parent."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=30)
        return int(float(out.stdout.split()[0]) * 2**20) if out.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def is_out_of_memory(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}"
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM"))


def next_batch(fits: int, fails: int | None, resolution: float, max_batch: int, factor: float = 1.25) -> int | None:
    """The next batch to try, or None when [fits, fails] is narrow enough.

    Steps of `factor` up (or down) from the estimate until one fits and one
    fails, then bisection: kgpt2.memory's estimate is usually within 25%, so
    most searches take three probes (each is a compile, the cost here).

        >>> next_batch(8, None, 0.15, 256), next_batch(0, 8, 0.15, 256), next_batch(8, 10, 0.15, 256)
        (10, 6, 9)
        >>> next_batch(16, 18, 0.15, 256) is None, next_batch(256, None, 0.15, 256) is None
        (True, True)
    """
    if fails is None:
        return min(max(fits + 1, int(fits * factor)), max_batch) if fits < max_batch else None
    if fits == 0:
        return max(1, min(fails - 1, int(fails / factor))) if fails > 1 else None
    if fails - fits <= max(1, int(fits * resolution)):
        return None
    return (fits + fails) // 2


def probe(args, size: str, mode: str, remat: bool, batch: int) -> dict:
    """Two training steps at `batch`; the result, or the out-of-memory error."""
    import keras

    from train_throughput import Cycle, _gpu_peak_bytes, build_kgpt2, kgpt2_config

    from kgpt2.data.batches import WindowBatches, to_dataset
    from kgpt2.data.shards import ShardSet
    from kgpt2.devices import resolve_device

    args.batch = batch
    cfg = kgpt2_config(args, mode, 64, size, [f"train.remat={'true' if remat else 'false'}"])
    device = resolve_device("auto")
    keras.config.set_dtype_policy(device.policy(cfg.train.precision))
    split = ShardSet(cfg.data.shards).split("train")
    base = WindowBatches(split.tokens, 0, split.num_tokens, sequence_length=args.seq, batch_size=batch, seed=0)
    t0 = time.perf_counter()
    try:
        with device.scope():
            model = build_kgpt2(cfg, 2)
            model.fit(to_dataset(Cycle(base, 2)), epochs=1, verbose=0, shuffle=False)
    except Exception as e:  # noqa: BLE001 - only an out-of-memory error is an answer; the rest is re-raised
        if not is_out_of_memory(e):
            raise
        return {"batch": batch, "fits": False, "seconds": round(time.perf_counter() - t0, 1)}
    finally:
        keras.backend.clear_session()
    return {"batch": batch, "fits": True, "seconds": round(time.perf_counter() - t0, 1),
            "peak_gb_so_far": round(_gpu_peak_bytes() / 1e9, 2)}


def search_one(args, spec: str) -> None:
    """In the capped subprocess: search one size:mode:remat, a JSON line per probe, then the answer."""
    from kgpt2.memory import COEFFICIENTS, estimate_training_bytes
    from train_throughput import SIZES

    size, mode, remat = spec.split(":")
    layers, heads, hidden = SIZES[size]
    params = 12 * layers * hidden**2 + 50304 * hidden  # GPT-2's count, close enough for a first guess
    per_sample = estimate_training_bytes(0, mode, 1, args.seq, layers, hidden, 50304)
    fixed = params * COEFFICIENTS[mode][0]
    fits, fails = 0, None
    batch = max(1, min(args.max_batch, int((args.cap_gb * 2**30 - fixed) // per_sample)))
    probes = []
    while batch is not None and len(probes) < args.max_probes:
        result = probe(args, size, mode, remat == "remat", batch)
        probes.append(result)
        print(json.dumps({"probe": spec, **result}), flush=True)
        if result["fits"]:
            fits = batch
        else:
            fails = batch
        batch = next_batch(fits, fails, args.resolution, args.max_batch)
    print(json.dumps({"variant": f"memory {size} {mode} {remat}", "size": size, "mode": mode, "remat": remat == "remat",
                      "largest_batch_fitting": fits, "smallest_batch_failing": fails, "cap_gib": args.cap_gb,
                      "seq": args.seq, "probes": probes}), flush=True)


def run_all(args, specs: list[str]) -> list[dict]:
    """Every spec in its own capped subprocess, `args.jobs` at a time; partial output kept on a timeout."""
    total = gpu_total_bytes()
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    if total:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{min(0.99, args.cap_gb * 2**30 / total):.4f}"

    def one(spec):
        cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "train_throughput.py"), "--search-one", spec,
               "--shards", args.shards, "--tokenizer", args.tokenizer, "--seq", str(args.seq),
               "--cap-gb", str(args.cap_gb), "--max-batch", str(args.max_batch), "--max-probes", str(args.max_probes),
               "--resolution", str(args.resolution)] + (["--tiny"] if args.tiny else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.search_timeout)
            out, err, code = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err, code = f"timed out after {args.search_timeout} s", "timeout"
        lines = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
        final = [ln for ln in lines if "variant" in ln]
        if final:
            return final[-1]
        tail = " | ".join((err or "").strip().splitlines()[-3:])[-600:]
        return {"variant": f"memory {spec}", "error": f"{code}: {tail}", "probes": lines,
                "fraction": env.get("XLA_PYTHON_CLIENT_MEM_FRACTION")}

    with ThreadPoolExecutor(args.jobs) as pool:
        results = []
        for result in pool.map(one, specs):
            print(json.dumps(result), flush=True)
            results.append(result)
            if args.out:  # after every search: a call cut short by `timeout` keeps what it found
                with open(args.out, "w") as f:
                    json.dump(results, f, indent=1)
    print("\nsize | mode | remat | largest batch that fits | smallest that fails")
    for r in results:
        if "error" in r:
            print(f"{r['variant']} | {r['error']}")
        else:
            print(f"{r['size']} | {r['mode']} | {r['remat']} | {r['largest_batch_fitting']} | {r['smallest_batch_failing']}")
    return results
