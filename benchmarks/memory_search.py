"""The largest training batch that fits a 16 GB GPU (Colab's T4), measured on a bigger GPU.

For each GPT-2 size x (full, LoRA) x (train.remat off, on), one subprocess
caps JAX's allocator (XLA_PYTHON_CLIENT_MEM_FRACTION = cap / the card's
total, so an H200 behaves like a 16 GB card) and builds kgpt2's model as the
trainer does, once (build_causal_lm, make_optimizer, compile_lm, the device's
precision). Then, instead of training at batch after batch (round 2: a
model build, a compile and two steps per probe, ~60 s each, 2 of 12
searches finished in 210 s), it asks XLA:

1. the train step (Keras' own `train_step`, jitted with the state donated,
   as `fit` jits it) is compiled at two batches, without running, and XLA's
   buffer assignment gives each one's memory (`memory_analysis()`:
   arguments + outputs - donated + temporaries, the state included);
   memory is linear in the batch, so the two points give the fixed part and
   the part per sample, and the largest batch under the cap;
2. that batch is compiled and trained for two real steps under the cap
   (the check: an out-of-memory error there means the allocator needs more
   than XLA's plan, and the batch steps down), and the next batch is
   compiled to confirm XLA's plan exceeds the cap.

Compiles skip XLA's autotuning (`--autotune-level 0`, an XLA option of
these compiles only): autotuning changes which kernels run, not the
buffers a step holds, and without it the searches running at once neither
wait for each other's GPU benchmarks nor take minutes to compile.

    # on the GPU machine (benchmarks/gpu_session.sh round3):
    # python benchmarks/train_throughput.py --memory-search --shards .bench/shards --tokenizer .bench/tokenizer
    # CPU dry run (no out-of-memory there: a small --cap-gb exercises the search):
    # python benchmarks/train_throughput.py --tiny --memory-search --cap-gb 0.5 --shards ... --tokenizer ...
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed


def gpu_total_bytes() -> int | None:
    """The first GPU's total memory from nvidia-smi, without starting JAX in the parent."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=30)
        return int(float(out.stdout.split()[0]) * 2**20) if out.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def largest_under(points: dict, cap: float, max_batch: int) -> tuple[int, float, float]:
    """(largest batch whose linear need <= cap, fixed bytes, bytes per sample) from {batch: bytes} (two or more).

        >>> largest_under({4: 10.0, 8: 18.0}, 30.0, 100)  # 2 + 2 per sample: 14 samples need 30
        (14, 2.0, 2.0)
        >>> largest_under({1: 40.0, 2: 45.0}, 30.0, 100)[0]  # not even one sample fits
        0
    """
    (b1, n1), (b2, n2) = sorted(points.items())[:1] + sorted(points.items())[-1:]
    per_sample = max((n2 - n1) / (b2 - b1), 1.0)
    fixed = n1 - per_sample * b1
    return max(0, min(max_batch, int((cap - fixed) // per_sample))), fixed, per_sample


class Stepper:
    """One built model and its state; Keras' train step compiled per batch size (memory plan), or run."""

    def __init__(self, args, size: str, mode: str, remat: bool):
        import keras
        from train_throughput import build_kgpt2, kgpt2_config

        from kgpt2.data.batches import WindowBatches
        from kgpt2.data.shards import ShardSet
        from kgpt2.training.devices import resolve_device

        self.cfg = kgpt2_config(args, mode, 64, size, [f"train.remat={'true' if remat else 'false'}"])
        self.device = resolve_device("auto")
        keras.config.set_dtype_policy(self.device.policy(self.cfg.train.precision))
        split = ShardSet(self.cfg.data.shards).split("train")
        self.windows = lambda b: WindowBatches(split.tokens, 0, split.num_tokens, sequence_length=args.seq,
                                               batch_size=b, seed=0)
        with self.device.scope():
            self.model = build_kgpt2(self.cfg, 2, self.device)
            self.model._symbolic_build(data_batch=self.windows(1)[0])  # optimizer and metrics variables
        import jax

        state = tuple([v.value for v in vs] for vs in (
            self.model.trainable_variables, self.model.non_trainable_variables,
            self.model.optimizer.variables, self.model.metrics_variables))
        # Every real probe starts from a fresh copy of this state. A step that runs out of memory leaves its
        # donated outputs holding the error, and every later step on them failed with the same allocation
        # (session 5's and 6's searches: "fits: false" down to batch 2 at a constant 9.37 GiB for 355M).
        self.state_spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
        self.host_state = jax.device_get(state)
        jax.tree.map(lambda a: a.delete(), state)  # the model's own buffers: only a probe's copy is on the card
        self.options = {"xla_gpu_autotune_level": args.autotune_level} if args.autotune_level >= 0 else None
        self.compiled: dict = {}
        self.last_error = ""

    def need(self, batch: int) -> int:
        """Peak bytes of one train step at `batch` by XLA's buffer assignment (compiles, runs nothing)."""
        import jax

        if batch not in self.compiled:
            data = jax.tree.map(lambda a: jax.ShapeDtypeStruct((batch,) + a.shape[1:], a.dtype), self.windows(1)[0])
            step = jax.jit(self.model.train_step, donate_argnums=0, compiler_options=self.options)
            self.compiled[batch] = step.lower(self.state_spec, data).compile()
        m = self.compiled[batch].memory_analysis()
        # XLA's GPU step holds its arguments (the state, donated into its outputs), the outputs that are new
        # buffers, and one allocation for all temporaries (`peak_memory_in_bytes` leaves the latter out on CPU).
        return m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes

    def fits(self, batch: int) -> bool:
        """Two real steps at `batch` (state carried on); False on an out-of-memory error."""
        import jax

        from kgpt2.errors import is_out_of_memory

        self.need(batch)
        data = self.windows(batch)[0]
        state = jax.device_put(self.host_state)
        try:
            for _ in range(2):
                logs, state = self.compiled[batch](state, data)
            jax.block_until_ready(logs)
        except Exception as e:  # noqa: BLE001 - only an out-of-memory error is an answer; the rest is re-raised
            if not is_out_of_memory(e):
                raise
            # Kept for the probe's log: which allocation failed says whether the cap, the card or a
            # workspace outside XLA's plan ran out (session 5's failures below the plan went unexplained).
            self.last_error = " ".join(str(e).split())[:300]
            return False
        finally:
            jax.tree.map(lambda a: a.is_deleted() or a.delete(), state)
        return True


def search_one(args, spec: str) -> None:
    """In the capped subprocess: search one size:mode:remat, a JSON line per probe, then the answer."""
    import train_throughput  # this process runs it as __main__: the module imported here needs --tiny too

    from kgpt2.model.memory import COEFFICIENTS, estimate_training_bytes

    if args.tiny:
        train_throughput.use_tiny_shapes()
    SIZES = train_throughput.SIZES
    size, mode, remat = spec.split(":")
    layers, heads, hidden = SIZES[size]
    cap = args.cap_gb * 2**30
    params = 12 * layers * hidden**2 + 50304 * hidden  # GPT-2's count, close enough for a first guess
    per_sample = estimate_training_bytes(0, mode, 1, args.seq, layers, hidden, 50304)
    guess = max(2, min(args.max_batch, int((cap - params * COEFFICIENTS[mode][0]) // per_sample)))
    t0 = time.perf_counter()
    stepper = Stepper(args, size, mode, remat == "remat")
    probes, points = [], {}

    def log(batch, kind, value):
        probes.append({"batch": batch, kind: value, "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps({"probe": spec, **probes[-1]}), flush=True)

    for batch in (guess, max(1, guess // 2)):  # two compiles: the line
        points[batch] = stepper.need(batch)
        log(batch, "need_gb", round(points[batch] / 1e9, 3))
    best, fixed, slope = largest_under(points, cap, args.max_batch)
    low = min(points)
    fits, fails = 0, None  # the largest batch seen to fit, the smallest seen to fail (by plan or by a real step)
    while best >= 1 and len(probes) < args.max_probes + 2 and (fails is None or fails - fits > 1):
        points[best] = stepper.need(best)
        if points[best] > cap:  # the line was a little low: refit through this point, XLA's plan decides
            log(best, "need_gb", round(points[best] / 1e9, 3))
            fails, best = best, min(best - 1, largest_under({low: points[low], best: points[best]}, cap, best)[0])
            best = max(best, fits + 1) if best > fits else (fits + fails) // 2
            continue
        ok = stepper.fits(best)
        log(best, "fits", ok)
        if not ok:
            probes[-1]["error"] = stepper.last_error
        if ok:
            fits = best
            if fails is None:
                break
        else:
            fails = best
        # The allocator needs more than the plan: bisect between what fitted and what failed (a quarter down
        # from the first failure when nothing has fitted yet), not 5% at a time.
        best = (fits + fails) // 2 if fits else max(1, (3 * fails) // 4)
    if fits and fails is None and fits < args.max_batch:
        fails = fits + 1
        log(fails, "need_gb", round(stepper.need(fails) / 1e9, 3))
    print(json.dumps({"variant": f"memory {size} {mode} {remat}", "size": size, "mode": mode, "remat": remat == "remat",
                      "largest_batch_fitting": fits, "smallest_batch_failing": fails,
                      "failing_by": "XLA's plan exceeds the cap" if fails == fits + 1 else "out of memory or plan",
                      "fixed_gb": round(fixed / 1e9, 3), "per_sample_gb": round(slope / 1e9, 4),
                      "cap_gib": args.cap_gb, "seq": args.seq, "autotune_level": args.autotune_level,
                      "seconds": round(time.perf_counter() - t0, 1), "probes": probes}), flush=True)


def run_all(args, specs: list[str]) -> list[dict]:
    """Every spec in its own capped subprocess, `args.jobs` at a time, all within `args.search_timeout` s;
    partial output kept on a timeout."""
    total = gpu_total_bytes()
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    if total:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{min(0.99, args.cap_gb * 2**30 / total):.4f}"

    deadline = time.time() + args.search_timeout  # for all searches: one queued late gets what is left
    if total:  # the caps must fit the card together, with ~2 GB a process outside the pool (CUDA context,
        # cuBLAS/cuDNN workspaces): 8 x 15 GiB on an H200 ran the card itself out and failed batches that fit
        args.jobs = max(1, min(args.jobs, int(total // (args.cap_gb * 2**30 + 2e9))))

    def one(spec):
        timeout = max(5.0, deadline - time.time())
        cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "train_throughput.py"), "--search-one", spec,
               "--shards", args.shards, "--tokenizer", args.tokenizer, "--seq", str(args.seq),
               "--cap-gb", str(args.cap_gb), "--max-batch", str(args.max_batch), "--max-probes", str(args.max_probes),
               "--resolution", str(args.resolution), "--autotune-level", str(args.autotune_level),
               ] + (["--tiny"] if args.tiny else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
            out, err, code = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err, code = f"timed out after {timeout:.0f} s (the searches' {args.search_timeout} s ran out)", "timeout"
        lines = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
        final = [ln for ln in lines if "variant" in ln]
        if final:
            return final[-1]
        tail = " | ".join((err or "").strip().splitlines()[-3:])[-600:]
        cut = {"variant": f"memory {spec}", "error": f"{code}: {tail}", "probes": lines,
               "fraction": env.get("XLA_PYTHON_CLIENT_MEM_FRACTION")}
        planned = {p["batch"]: p["need_gb"] * 1e9 for p in lines if "need_gb" in p}
        if len(planned) >= 2:  # cut before the check: XLA's plan still answers, unconfirmed
            cut["planned_largest_batch"] = largest_under(planned, args.cap_gb * 2**30, args.max_batch)[0]
        return cut

    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(one, spec): spec for spec in specs}
        done = {}
        for future in as_completed(futures):  # written as each finishes: an outer timeout keeps them all
            done[futures[future]] = result = future.result()
            print(json.dumps(result), flush=True)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump([done[s] for s in specs if s in done], f, indent=1)
    results = [done[s] for s in specs]
    print(f"\nsize | mode | remat | largest batch that fits (run) | smallest that fails | fixed GB + GB a sample (XLA plan), cap {args.cap_gb} GiB")
    for r in results:
        if "error" in r:
            print(f"{r['variant']} | {r['error'][:200]} | planned largest: {r.get('planned_largest_batch', '-')}")
        else:
            print(f"{r['size']} | {r['mode']} | {r['remat']} | {r['largest_batch_fitting']} | {r['smallest_batch_failing']} "
                  f"| {r['fixed_gb']} + {r['per_sample_gb']}")
    return results
