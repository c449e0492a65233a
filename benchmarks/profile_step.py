"""Where one kgpt2 training step spends its GPU time: a JAX profile, read against XLA's optimised HLO.

`collect` (on the GPU machine) builds the model, optimizer and data exactly as
`train_throughput.py` does (kgpt2's own path: shards -> grain -> `fit`),
warms up, traces `--steps` steps with `jax.profiler.trace`, and saves the
trace (`trace.xplane.pb.gz`) and the train step's optimised HLO
(`train_step_hlo.txt.gz`, from `--xla_dump_to`) to `--out-dir`; then it
runs `analyze` on them. `analyze` (anywhere, no GPU) puts every GPU kernel
of the train step in one bucket:

- attention: cuDNN's fused attention kernels (forward and backward),
- matmul: cuBLAS matrix products (projections, MLP, the tied output layer),
- vocabulary: XLA fusions over the 50,304-wide vocabulary axis (the loss,
  its gradient, training metrics),
- optimizer: fusions under Keras's AdamW (and clipping),
- other: layer norms, GELU, residual adds, bias gradients, casts.

XLA names a fusion's kernel after the fusion (`loop_add_fusion_3` for
`loop_add_fusion.3`) and reuses one kernel for identical fusions, so a
kernel's time can cover several layers' copies of the same op. No
TensorBoard or xprof is needed: `jax.profiler.ProfileData` reads the trace.

    # on the GPU machine, after `. benchmarks/device_setup.sh`:
    # python benchmarks/profile_step.py collect --shards .bench/shards --tokenizer .bench/tokenizer --out-dir $OUT/full
    # anywhere, on what came back:
    # python benchmarks/profile_step.py analyze --trace DIR/trace.xplane.pb.gz --hlo DIR/train_step_hlo.txt.gz
    # data parallel on 2 GPUs (issue 22: where the 2-GPU step loses time against 1 GPU), per device:
    # python benchmarks/profile_step.py collect ... --devices 2 --out-dir $OUT/dp2

With `--devices N` the step runs under kgpt2's data-parallel plan (the
trainer's `keras.distribution.DataParallel`, `--batch` sequences per
device) and every GPU is analysed: its NCCL kernels form the `collective`
bucket, and `collective_exposed_ms_per_step` is the part of their time no
other kernel on that GPU overlaps (the all-reduce the backward pass did not
hide).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile

HLO_LINE = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([a-z][\w\-]*)\((.*)$")


def _open(path, mode="rt"):
    return gzip.open(path, mode) if str(path).endswith(".gz") else open(path, mode)


def read_hlo(path) -> tuple[dict, dict]:
    """(instructions, computations) of an optimised HLO text dump.

    instructions: name -> {shape, calls, op_name, line}
    computations: name -> the text of its body
    """
    instructions, computations, current = {}, {}, None
    with _open(path) as f:
        for line in f:
            if line.strip() and not line[0].isspace() and line.rstrip().endswith("{"):
                # "ENTRY %main.12 (p: f32[2]) -> f32[2] {" or "fused_computation.3 {"
                current = line.replace("ENTRY", "").split()[0].lstrip("%")
                computations[current] = []
                continue
            if current is None:
                continue
            computations[current].append(line)
            m = HLO_LINE.match(line)
            if m:
                name, shape, _opcode, rest = m.groups()
                calls = re.search(r"calls=%?([\w.\-]+)", rest)
                op_name = re.search(r'op_name="([^"]+)"', rest)
                instructions[name] = {"shape": shape, "calls": calls.group(1) if calls else "",
                                      "op_name": op_name.group(1) if op_name else "", "line": line.strip()}
    return instructions, {k: "".join(v) for k, v in computations.items()}


def kernel_bucket(kernel: str, instructions: dict, computations: dict, vocab: int) -> tuple[str, dict | None]:
    """The bucket of one GPU kernel, and the HLO fusion it came from (if it maps to one)."""
    if "sdpa" in kernel or "cudnn" in kernel or "fmha" in kernel:
        return "attention", None
    if "nvjet" in kernel or "gemm" in kernel or "cutlass" in kernel or "cublas" in kernel:
        return "matmul", None
    if "nccl" in kernel.lower():
        return "collective", None
    if kernel.startswith(("Memset", "Memcpy", "memcpy")):
        return "copies", None
    m = re.match(r"^(.*)_(\d+)$", kernel)
    info = instructions.get(kernel) or (instructions.get(f"{m.group(1)}.{m.group(2)}") if m else None)
    if info is None:
        return "other", None
    if "adam" in info["op_name"] or "optimizer" in info["op_name"]:
        return "optimizer", info
    if re.search(rf"[\[,]{vocab}[\],]", info["line"] + computations.get(info["calls"], "")):
        return "vocabulary", info
    return "other", info


def _exposed_ns(kernels) -> int:
    """Time of the collective kernels during which no other kernel of the same GPU runs."""
    # sweep over start/end points: count running compute kernels and running collectives
    points = []
    for name, start, dur in kernels:
        kind = 1 if "nccl" in name.lower() else 0
        points += [(start, 1, kind), (start + dur, -1, kind)]
    points.sort(key=lambda p: (p[0], p[1]))
    running, exposed, last = [0, 0], 0, None
    for t, delta, kind in points:
        if last is not None and running[1] > 0 and running[0] == 0:
            exposed += t - last
        running[kind] += delta
        last = t
    return exposed


def analyze(trace_path, hlo_path, steps: int, vocab: int = 50304, module: str = "jit_train_step") -> dict:
    import jax

    with _open(trace_path, "rb") as f:
        data = jax.profiler.ProfileData.from_serialized_xspace(f.read())
    per_device = collections.defaultdict(list)  # GPU plane -> (name, start_ns, duration_ns) of the step's kernels
    for plane in data.planes:
        if plane.name.startswith("/device:GPU:"):
            for line in plane.lines:
                for e in line.events:
                    if dict(e.stats).get("hlo_module") == module:
                        per_device[plane.name.split()[0]].append((e.name, e.start_ns, e.duration_ns))
    if not per_device:
        raise SystemExit(f"no GPU kernels of {module} in {trace_path}")
    instructions, computations = read_hlo(hlo_path)
    devices = sorted(per_device)
    result = _analyze_device(per_device[devices[0]], instructions, computations, steps, vocab)
    if len(devices) > 1:
        result["per_device"] = {d: {k: v for k, v in _analyze_device(per_device[d], instructions, computations,
                                                                      steps, vocab).items() if k != "top_kernels"}
                                for d in devices}
    return result


TOP_KERNELS = 60  # kernels (by name) kept in the result: enough to read the "other" bucket without the trace


def _analyze_device(kernels, instructions, computations, steps: int, vocab: int) -> dict:
    buckets, per_kernel, calls, where = collections.Counter(), collections.Counter(), collections.Counter(), {}
    for name, _, dur in kernels:
        b, info = kernel_bucket(name, instructions, computations, vocab)
        buckets[b] += dur
        per_kernel[name] += dur
        calls[name] += 1
        where[name] = (b, info)
    busy_ms = sum(d for _, _, d in kernels) / steps / 1e6
    span_ms = (max(s + d for _, s, d in kernels) - min(s for _, s, _ in kernels)) / steps / 1e6
    top = []
    for name, dur in per_kernel.most_common(TOP_KERNELS):
        b, info = where[name]
        top.append({"kernel": name[:90], "bucket": b, "ms_per_step": round(dur / steps / 1e6, 3),
                    "calls_per_step": round(calls[name] / steps, 1),
                    "shape": info["shape"][:90] if info else "", "op_name": info["op_name"][-90:] if info else ""})
    attention_masks = sorted(set(re.findall(r'"mask_type":"([A-Z_]+)"', "".join(
        i["line"] for i in instructions.values() if "fmha" in i["line"]))))
    return {
        "steps": steps, "kernels_per_step": len(kernels) // steps,
        "gpu_busy_ms_per_step": round(busy_ms, 2), "trace_span_ms_per_step": round(span_ms, 2),
        "collective_exposed_ms_per_step": round(_exposed_ns(kernels) / steps / 1e6, 3),
        "buckets_ms_per_step": {k: round(v / steps / 1e6, 2) for k, v in buckets.most_common()},
        "attention_mask_types": attention_masks, "top_kernels": top,
    }


def print_analysis(result: dict) -> None:
    busy = result["gpu_busy_ms_per_step"]
    print(f"GPU busy {busy} ms per step (trace span {result['trace_span_ms_per_step']} ms, collectives exposed "
          f"{result['collective_exposed_ms_per_step']} ms), "
          f"{result['kernels_per_step']} kernels per step; cuDNN attention mask types: {result['attention_mask_types']}")
    for k, v in result["buckets_ms_per_step"].items():
        print(f"  {k:11s} {v:7.2f} ms  {v / busy:6.1%}")
    for t in result["top_kernels"][:15]:
        print(f"  {t['ms_per_step']:7.3f} ms  {t['bucket']:10s} {t['kernel'][:60]:60s} {t['op_name'][-50:]}")
    for device, r in result.get("per_device", {}).items():
        print(f"{device}: busy {r['gpu_busy_ms_per_step']} ms, span {r['trace_span_ms_per_step']} ms, collectives "
              f"exposed {r['collective_exposed_ms_per_step']} ms per step; {r['buckets_ms_per_step']}")


def collect(args) -> dict:
    dump = tempfile.mkdtemp(prefix="xla-dump-")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump} --xla_dump_hlo_as_text"
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import jax
    import keras
    from train_throughput import Cycle, build_kgpt2, kgpt2_config

    from kgpt2.data.batches import WindowBatches, to_dataset
    from kgpt2.data.shards import ShardSet
    from kgpt2.training.devices import resolve_device
    from kgpt2.training.distribution import plan_data_parallel

    args.batch *= args.devices  # --batch is per device; the plan takes the global batch
    cfg = kgpt2_config(args, args.mode, 64, "124M", args.set)
    device = resolve_device("auto")
    parallel = plan_data_parallel(args.devices, args.batch)
    keras.config.set_dtype_policy(device.policy(cfg.train.precision))
    keras.utils.set_random_seed(0)
    split = ShardSet(cfg.data.shards).split("train")
    base = WindowBatches(split.tokens, 0, split.num_tokens, sequence_length=args.seq,
                         batch_size=args.batch, seed=0, shuffle=True)
    trace_dir = tempfile.mkdtemp(prefix="trace-")
    from lever_ablation import _value, module_constants

    constants = {k: _value(v) for k, v in (item.split("=", 1) for item in args.mod)}
    with parallel.scope() if parallel else device.scope(), module_constants(constants):
        model = build_kgpt2(cfg, args.warmup + args.steps, device)
        model.fit(to_dataset(Cycle(base, args.warmup)), epochs=1, verbose=0, shuffle=False)
        callbacks = []
        if args.step_log:  # the benchmarks' and the trainer's per-step clock (train_throughput.timed_fit)
            from kgpt2.training.run_logs import StepLog

            log = StepLog(f"{tempfile.mkdtemp()}/steps.csv", tensorboard_dir=None)
            log._tensorboard = False
            callbacks = [log.callback(0, model.kgpt2_schedule, 0, args.batch * args.seq)]
        with jax.profiler.trace(trace_dir):
            model.fit(to_dataset(Cycle(base, args.steps, offset=args.warmup)), epochs=1, verbose=0, shuffle=False,
                      callbacks=callbacks)
    os.makedirs(args.out_dir, exist_ok=True)
    trace = os.path.join(args.out_dir, "trace.xplane.pb.gz")
    hlo = os.path.join(args.out_dir, "train_step_hlo.txt.gz")
    for src, dst in ((glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0], trace),
                     (max(glob.glob(f"{dump}/*jit_train_step*after_optimizations.txt"), key=os.path.getsize), hlo)):
        with open(src, "rb") as f, gzip.open(dst, "wb") as g:
            shutil.copyfileobj(f, g)
    return analyze(trace, hlo, args.steps, vocab=model.backbone.vocabulary_size)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)
    c = sub.add_parser("collect", help="trace kgpt2's training step on this GPU, then analyze")
    c.add_argument("--shards", required=True)
    c.add_argument("--tokenizer", required=True)
    c.add_argument("--mode", default="full", choices=["full", "lora"])
    c.add_argument("--batch", type=int, default=16, help="sequences per device")
    c.add_argument("--devices", type=int, default=1, help="data parallel over this many GPUs (kgpt2's plan)")
    c.add_argument("--seq", type=int, default=1024)
    c.add_argument("--warmup", type=int, default=5)
    c.add_argument("--steps", type=int, default=10)
    c.add_argument("--set", action="append", default=[], help="kgpt2 config override (key=value)")
    c.add_argument("--step-log", action="store_true", help="fit with the step log callback, as benchmarks time it")
    c.add_argument("--mod", action="append", default=[], help="a kgpt2 module constant (kgpt2.kernels.fused_block.QKV=False)")
    c.add_argument("--out-dir", required=True)
    a = sub.add_parser("analyze", help="bucket the GPU time of a saved trace")
    a.add_argument("--trace", required=True)
    a.add_argument("--hlo", required=True)
    a.add_argument("--steps", type=int, default=10)
    a.add_argument("--vocab", type=int, default=50304)
    a.add_argument("--out")
    args = p.parse_args(argv)
    if args.verb == "collect":
        result = dict(mode=args.mode, devices=args.devices, overrides=args.set, **collect(args))
        out = os.path.join(args.out_dir, "profile.json")
    else:
        result = analyze(args.trace, args.hlo, args.steps, args.vocab)
        out = args.out
    print_analysis(result)
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
