"""Generation speed in one run: kgpt2's `Generator` at batch 1, keras-hub and HF `generate`, the engine at N streams.

GPT-2 124M shape (random weights, seeded; `--tiny`: a 2-layer, 64-wide model
for a CPU dry run), `--prompt-tokens` prompts, exactly `--new-tokens` greedy
tokens (end-of-text never stops early). One process, in this order, each
section written to `--out` as soon as it is done (a time-out keeps the rest):

1. batch 1: kgpt2 `Generator` (one row per `--chunks` value: decode steps per
   fixed-length device loop; the first is the default), kgpt2's decoder from
   before the engine (benchmarks/baselines, the 1,332 tok/s one), keras-hub
   `GPT2CausalLM.generate`, HF `generate` (same weights, exported with
   keras-hub's `export_to_transformers`). Calls 1-3 warm up (call 1
   compiles), then `--repeats` rounds in turns; medians. TTFT = the first
   token out of `Generator.stream_ids` (the prefill alone) / a 1-new-token
   generate for the peers. Also kgpt2's streaming rate and the programs it
   compiled (must not grow after the warm-up for new prompts and settings).
2. N streams (`--streams`): N requests submitted together to an `Engine` with
   N slots and stepped to the end (what `kgpt2 serve` does minus HTTP;
   `prefill_ms` = admitting all N, one batched prefill), against one HF
   `generate` on the same N prompts; `--stream-repeats` rounds in turns.
3. decode steps per launch at the largest N (`--launch-steps`, a runtime
   value: no new compile), and the engine's own choice (`steps_per_launch`,
   `full_steps_per_launch` while every slot is taken).
4. `--xla-variants` (GPU default: cmdbuf, cublaslt): `Generator` and the engine at
   the largest N compiled with other XLA options (XLA_VARIANTS: loops and
   conditionals in CUDA graphs; cuBLASLt GEMMs with fused epilogues).
5. `--profile` (GPU default): one traced `Generator` call and one run at the
   largest N; device time per token by kernel, kernels per token.

    KERAS_BACKEND=jax python benchmarks/generate_latency.py --tiny --out .tmp/gen-tiny.json   # CPU dry run
    KERAS_BACKEND=jax python benchmarks/generate_latency.py --device cpu --streams 1 --new-tokens 32 --out gen-cpu.json
    KERAS_BACKEND=jax python benchmarks/generate_latency.py --device gpu --out $OUT/gen-gpu.json  # H200: ~4 minutes

Needs jax, keras, keras-hub, numpy; torch + transformers for the HF peer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gen_peers import HF, SHAPE_124M, SHAPE_TINY, EnginePeer, KerasHub, Kgpt2, Previous, build_model, prompts, timed  # noqa: E402

# Section 4's XLA option sets for the decode and prefill programs (jax.jit compiler_options).
XLA_VARIANTS = {
    "cmdbuf": {"xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,WHILE,CONDITIONAL"},
    "cmdbuf1": {"xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,WHILE,CONDITIONAL",
                "xla_gpu_graph_min_graph_size": 1},  # every fusion sequence a CUDA graph, however short
    "cublaslt": {"xla_gpu_enable_cublaslt": True},  # bias / activation epilogues fused into the GEMMs
    "notriton": {"xla_gpu_enable_triton_gemm": False},  # cuBLAS for every GEMM (+3.2% on the 124M training step)
    "cmdbuf+cublaslt": {"xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,"
                        "WHILE,CONDITIONAL", "xla_gpu_enable_cublaslt": True},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model and few tokens: a CPU dry run")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="weights, cache and compute (default: float32 on cpu, bfloat16 on gpu)")
    p.add_argument("--quantize", default="none", help="none, int8 or bfloat16 (on a JAX CPU: the weights rounded, "
                   "decoded from bfloat16 copies in float32): the Keras peers' weights; a list (none,int8) "
                   "adds a kgpt2 Generator row per further value (the same weights, quantised)")
    p.add_argument("--prompt-tokens", type=int, default=28)
    p.add_argument("--new-tokens", type=int, default=None, help="default 100 (16 with --tiny)")
    p.add_argument("--repeats", type=int, default=None, help="timed batch-1 rounds (default 5; 2 with --tiny)")
    p.add_argument("--stream-repeats", type=int, default=None, help="timed rounds per N (default 3; 1 with --tiny)")
    p.add_argument("--peers", default="kgpt2,previous,keras-hub,hf",
                   help="batch-1 peers: kgpt2, previous (the decoder before the engine), keras-hub, hf (hf: also at N streams)")
    p.add_argument("--skip-batch-1", action="store_true", help="sections 2-4 only (serve_throughput.py)")
    p.add_argument("--chunks", default=None, help="Generator chunk sizes, the default first (gpu: 1,8; cpu: 1)")
    p.add_argument("--streams", default=None, help="concurrent streams for the engine (gpu: 1,8,32,64; cpu: 1,4)")
    p.add_argument("--launch-steps", default=None, help="decode steps per launch tried at the largest N "
                   "(default 8,16,32,128; section 2 runs at 16 if listed, else the first)")
    p.add_argument("--xla-variants", default=None, help="section 4: XLA option sets, of " + ", ".join(XLA_VARIANTS)
                   + " (gpu default: cmdbuf,cublaslt; cpu: none)")
    p.add_argument("--blocks", default="auto,keras-hub",
                   help="kgpt2's decoder blocks, the default first: auto (fused where supported), keras-hub (the "
                        "model's layers); each further value adds a Generator row and an engine run at N streams")
    p.add_argument("--batch1-variants", default="",
                   help="further Generator rows, each NORM or NORM+XLA: NORM two-pass|one-pass (the fused blocks' "
                        "layer norm), XLA a name in XLA_VARIANTS")
    p.add_argument("--engine-chunks", default=None,
                   help="further decode chunk sizes for the engine at the largest N (gpu default: 8; the engine's "
                        "default is 1): section 3 again with each")
    p.add_argument("--profile", choices=["auto", "on", "off"], default="auto", help="section 5 (auto: on gpu)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    gpu = a.device == "gpu"
    a.dtype = a.dtype or ("bfloat16" if gpu else "float32")
    a.new_tokens = a.new_tokens or (16 if a.tiny else 100)
    a.repeats = a.repeats or (2 if a.tiny else 5)
    a.stream_repeats = a.stream_repeats or (1 if a.tiny else 3)
    a.peers = [x.strip() for x in a.peers.split(",") if x.strip()]
    a.quantize = [x.strip() for x in a.quantize.split(",") if x.strip()]
    assert set(a.quantize) <= {"none", "int8", "bfloat16"}, a.quantize
    a.chunks = [int(x) for x in (a.chunks or ("1,8" if gpu else "4,1" if a.tiny else "1")).split(",") if x]
    a.streams = [int(x) for x in (a.streams if a.streams is not None else ("1,8,32,64" if gpu else "1,4")).split(",") if x]
    a.launch_steps = [int(x) for x in (a.launch_steps or ("4,16" if a.tiny else "8,16,32,128")).split(",") if x]
    a.xla_variants = [x for x in (a.xla_variants if a.xla_variants is not None else "cmdbuf,cublaslt" if gpu else "").split(",") if x]
    assert set(a.xla_variants) <= set(XLA_VARIANTS), a.xla_variants
    a.engine_chunks = [int(x) for x in (a.engine_chunks if a.engine_chunks is not None else "8" if gpu else "").split(",") if x]
    a.batch1_variants = [x.strip() for x in a.batch1_variants.split(",") if x.strip()]
    a.blocks = [x.strip() for x in a.blocks.split(",") if x.strip()]
    a.profile = a.profile == "on" or (a.profile == "auto" and gpu)
    return a


def machine() -> dict:
    import keras

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(), "keras_backend": keras.backend.backend()}
    if keras.backend.backend() == "jax":
        import jax

        info["devices"] = [str(d) for d in jax.devices()]
    for mod in ("jax", "keras", "keras_hub", "tensorflow", "torch", "transformers"):
        if sys.modules.get(mod) is not None:
            info[mod] = getattr(sys.modules[mod], "__version__", "?")
    return info


def write_report(name: str, a, results: dict, quiet: bool = False) -> dict:
    """Print (unless `quiet`) a benchmark's JSON report (args, machine, results); write it to `a.out` if given."""
    report = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M"), "args": vars(a),
              "machine": machine(), "results": results}
    text = json.dumps(report, indent=2)
    if not quiet:
        print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return report


def settle(a) -> None:
    """On a CPU, let torch's OpenMP threads stop spinning after an HF call before the next timing (they
    would take the cores from whatever runs right after HF: on 2 cores, 3x slower for a tiny model)."""
    if a.device == "cpu":
        time.sleep(0.2)


def batch_one(impls, a, vocabulary, extras: bool = True) -> dict:
    """Section 1: warm-up calls, then timed rounds in turns (load changes hit every implementation alike)."""
    warm, runs = prompts(a.prompt_tokens, 3, vocabulary, 1), prompts(a.prompt_tokens, a.repeats, vocabulary, 2)
    out = {}
    for impl in impls:
        calls = [round(timed(lambda: impl.generate(ids))[0], 4) for ids in warm]
        impl.ttft(warm[0])  # compiles the 1-token shape where that is a new program
        out[impl.name] = {"calls_1_2_3_s": calls, "runs_s": [], "cpu_runs_s": [], "ttft_runs_s": []}
        print(f"warm: {impl.name}: {calls}", flush=True)
    for r in range(a.repeats):
        for impl in impls:
            settle(a)
            cpu = time.process_time()  # this process's CPU seconds: less bent by other processes than wall time
            out[impl.name]["runs_s"].append(round(timed(lambda: impl.generate(runs[r]))[0], 4))
            out[impl.name]["cpu_runs_s"].append(round(time.process_time() - cpu, 4))
            settle(a)
            out[impl.name]["ttft_runs_s"].append(round(impl.ttft(runs[r]), 4))
    for impl in impls:
        res = out[impl.name]
        res["tok_s"] = round(a.new_tokens / statistics.median(res["runs_s"]), 1)
        res["cpu_ms_per_token"] = round(1000 * statistics.median(res["cpu_runs_s"]) / a.new_tokens, 2)
        res["ttft_median_ms"] = round(1000 * statistics.median(res["ttft_runs_s"]), 2)
        print(f"batch 1: {impl.name}: {res['tok_s']} tok/s, TTFT {res['ttft_median_ms']} ms, "
              f"{res['cpu_ms_per_token']} CPU ms a token", flush=True)
    first = [i for i in impls if isinstance(i, Kgpt2)]
    if first and extras:
        main = first[0]
        res = out[main.name]
        res["stream_tok_s"] = round(a.new_tokens / statistics.median(timed(lambda: main.stream(ids))[0] for ids in runs), 1)
        res["compiles_after_warmup"] = main.gen.compiles
        res["compiles_after_new_settings"] = settings_sweep(main, a, vocabulary)
        tokens = {i.name: i.generate(runs[0]) for i in impls}
        ours = tokens[main.name]
        out["greedy_positions_equal_to_kgpt2"] = {k: sum(x == y for x, y in zip(ours, v)) for k, v in tokens.items()}
    return out


def settings_sweep(impl, a, vocabulary) -> int:
    """Other prompt lengths and sampler settings; the programs compiled after them (greedy ones: no new program;
    the first sampling request: the sampling decode loop, once)."""
    from kgpt2.generate import Settings

    cases = [("greedy", {}, a.prompt_tokens - 8), ("top_p", dict(temperature=0.8, top_p=0.95, top_k=50, seed=1), a.prompt_tokens),
             ("top_k", dict(temperature=0.7, top_k=40, seed=3), a.prompt_tokens + 3), ("random", dict(temperature=1.0, seed=4), 5)]
    for i, (sampler, kw, length) in enumerate(cases):
        impl.gen.generate_ids(prompts(length, 1, vocabulary, 100 + i)[0], Settings(sampler=sampler, max_new_tokens=8, **kw))
    return impl.gen.compiles


def streams(engine, hf, a, vocabulary, steps) -> dict:
    """Section 2: N streams on the engine against HF's batched generate, in turns."""
    out = {}
    for n in a.streams:
        peers = [p for p in (engine, hf) if p is not None]
        row = {p.name: {"runs_s": []} for p in peers}
        for p in peers:
            row[p.name]["warmup_s"] = round(timed(lambda: p.run(prompts(a.prompt_tokens, n, vocabulary, n), steps))[0], 3)
        prefill = []
        for r in range(a.stream_repeats):
            batch = prompts(a.prompt_tokens, n, vocabulary, 1000 * n + r)
            for p in peers:
                settle(a)
                seconds, admitted = timed(lambda: p.run(batch, steps))
                row[p.name]["runs_s"].append(round(seconds, 4))
                prefill += [admitted] if p is engine else []
        for p in peers:
            row[p.name]["tok_s"] = round(n * a.new_tokens / statistics.median(row[p.name]["runs_s"]), 1)
        row[engine.name]["prefill_ms"] = round(1000 * statistics.median(prefill), 2)
        row[engine.name]["compiles"] = engine.engines[n].compiles
        print(f"{n} streams: " + ", ".join(f"{k} {v['tok_s']} tok/s" for k, v in row.items()), flush=True)
        out[n] = row
    return out


def launch_steps(engine, a, vocabulary) -> dict:
    """Section 3: tokens/s at the largest N for each number of decode steps per launch."""
    n, out = max(a.streams), {}
    engine.run(prompts(a.prompt_tokens, n, vocabulary, 5), a.launch_steps[0])  # compiles when the engine is new
    for steps in a.launch_steps:
        runs = [timed(lambda: engine.run(prompts(a.prompt_tokens, n, vocabulary, 7 * r + steps), steps))[0]
                for r in range(a.stream_repeats)]
        out[steps] = {"runs_s": [round(x, 4) for x in runs], "tok_s": round(n * a.new_tokens / statistics.median(runs), 1)}
        print(f"{n} streams, {steps} steps a launch: {out[steps]['tok_s']} tok/s", flush=True)
    e = engine.engine(n)  # the engine's own choice: steps_per_launch, or full_steps_per_launch with every slot taken
    runs = [timed(lambda: engine.run(prompts(a.prompt_tokens, n, vocabulary, 11 * r), None))[0] for r in range(a.stream_repeats)]
    key = f"{e.steps_per_launch}, {e.full_steps_per_launch} when full"
    out[key] = {"runs_s": [round(x, 4) for x in runs], "tok_s": round(n * a.new_tokens / statistics.median(runs), 1)}
    print(f"{n} streams, {key}: {out[key]['tok_s']} tok/s", flush=True)
    return out


def xla_variant(model, a, vocabulary, name: str) -> dict:
    """Section 4: `Generator` at batch 1 and the engine at the largest N with one set of XLA options."""
    options = XLA_VARIANTS[name]
    out = batch_one([Kgpt2(model, a, a.chunks[0], options, label=name)], a, vocabulary, extras=False)
    if a.streams:
        peer = EnginePeer(model, a, max(a.launch_steps), options)
        out[f"kgpt2 Engine, {max(a.streams)} streams"] = launch_steps(peer, a, vocabulary)
    return out


def profile(fn, tokens: int, a, top: int = 30) -> dict:
    """Section 5: one traced call; device time per token by kernel (GPU) or by XLA operation (CPU threads)."""
    import collections
    import glob
    import tempfile

    import jax

    folder = tempfile.mkdtemp(prefix="kgpt2-trace-")
    fn()
    jax.profiler.start_trace(folder)
    seconds = timed(fn)[0]
    jax.profiler.stop_trace()
    path = sorted(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True))[-1]
    data = jax.profiler.ProfileData.from_serialized_xspace(Path(path).read_bytes())
    gpu, busy, count, lines = a.device == "gpu", collections.Counter(), collections.Counter(), collections.Counter()
    for plane in data.planes:
        if gpu != plane.name.startswith("/device:GPU:0") or (not gpu and not plane.name.startswith("/host:CPU")):
            continue
        for line in plane.lines:
            lines[f"{plane.name[:24]} | {line.name[:40]}"] += sum(1 for _ in line.events)
            if (gpu and not line.name.startswith("Stream")) or (not gpu and not line.name.startswith("tf_XLA")):
                continue
            for e in line.events:
                if not e.name.startswith(("ThunkExecutor", "while")):  # CPU: loops hold the operations timed here
                    busy[e.name] += e.duration_ns
                    count[e.name] += 1
    return {"wall_ms_per_token": round(1000 * seconds / tokens, 4),
            "busy_ms_per_token": round(sum(busy.values()) / 1e6 / tokens, 4),
            "kernels_per_token": round(sum(count.values()) / tokens, 1),
            "top": [[k[:100], round(v / 1e6 / tokens, 4), round(count[k] / tokens, 2)] for k, v in busy.most_common(top)],
            "lines": dict(lines.most_common(12))}


def profiles(model, a, vocabulary) -> dict:
    ids = prompts(a.prompt_tokens, 1, vocabulary, 3)[0]
    main = Kgpt2(model, a, a.chunks[0])
    out = {"batch_1": profile(lambda: main.generate(ids), a.new_tokens, a)}
    if a.streams:
        n, peer = max(a.streams), EnginePeer(model, a, max(a.launch_steps))
        batch = prompts(a.prompt_tokens, n, vocabulary, 4)
        out[f"engine_{n}_streams"] = profile(lambda: peer.run(batch, None), n * a.new_tokens, a)
    for k, v in out.items():
        print(f"profile {k}: {v['wall_ms_per_token']} ms a token wall, {v['busy_ms_per_token']} busy, "
              f"{v['kernels_per_token']} kernels a token", flush=True)
    return out


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.path.insert(0, str(HERE.parent))
    import keras

    keras.config.set_dtype_policy(a.dtype)
    shape = SHAPE_TINY if a.tiny else SHAPE_124M
    model, hf_dir = build_model(shape, a.quantize[0])
    vocabulary = shape["vocabulary"]
    hf = HF(a, hf_dir, shape) if "hf" in a.peers else None
    results = {"shape": shape, "hf_same_weights": bool(hf and hf.same_weights)}
    if not a.skip_batch_1:
        impls = [Kgpt2(model, a, c) for c in a.chunks] if "kgpt2" in a.peers else []
        impls += [Kgpt2(model, a, a.chunks[0], blocks=b) for b in a.blocks[1:]] if "kgpt2" in a.peers else []
        for variant in a.batch1_variants:
            norm, _, xla = variant.partition("+")
            impls.append(Kgpt2(model, a, a.chunks[0], XLA_VARIANTS.get(xla), label=xla, norm=norm))
        for mode in a.quantize[1:]:  # the same random weights, quantised
            impls.append(Kgpt2(build_model(shape, mode)[0], a, a.chunks[0]))
            impls[-1].name += f", {mode} weights"
        impls += [Previous(model, a)] if "previous" in a.peers else []
        impls += [KerasHub(model, a)] if "keras-hub" in a.peers else []
        impls += [hf] if hf else []
        results["batch_1"] = batch_one(impls, a, vocabulary)
        write_report("generate_latency", a, results, quiet=True)
    if a.streams:
        default_steps = 16 if 16 in a.launch_steps else a.launch_steps[0]
        engine = EnginePeer(model, a, max(a.launch_steps))
        results["streams"] = {"decode_steps_per_launch": default_steps,
                              **streams(engine, hf, a, vocabulary, default_steps)}
        write_report("generate_latency", a, results, quiet=True)
        results["launch_steps"] = launch_steps(engine, a, vocabulary)
        write_report("generate_latency", a, results, quiet=True)
        for chunk in a.engine_chunks:  # section 3 with other decode chunk sizes
            other = EnginePeer(model, a, max(a.launch_steps), chunk=chunk)
            results[f"launch_steps, chunk {chunk}"] = launch_steps(other, a, vocabulary)
            write_report("generate_latency", a, results, quiet=True)
        for blocks in a.blocks[1:]:  # the same streams with other decoder blocks (no HF rerun)
            other = EnginePeer(model, a, max(a.launch_steps), blocks=blocks)
            results[f"streams, {blocks} blocks"] = streams(other, None, a, vocabulary, default_steps)
            write_report("generate_latency", a, results, quiet=True)
    for name in a.xla_variants:
        try:
            results.setdefault("xla_variants", {})[name] = xla_variant(model, a, vocabulary, name)
        except Exception as e:  # noqa: BLE001  (an XLA that refuses the option: recorded, the rest kept)
            results.setdefault("xla_variants", {})[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        write_report("generate_latency", a, results, quiet=True)
    if a.profile:
        try:
            results["profile"] = profiles(model, a, vocabulary)
        except Exception as e:  # noqa: BLE001
            results["profile"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    return write_report("generate_latency", a, results)


if __name__ == "__main__":
    main()
