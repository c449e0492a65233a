"""Generation latency: kgpt2's `Generator` against keras-hub `generate` and HF `generate`.

GPT-2 124M shape (random weights: speed does not depend on them), batch 1,
a 28-token prompt, 64 new tokens, greedy, end-of-text never stops early.
All implementations are built first, warmed up (calls 1-3, each with a new
prompt: call 1 compiles), then timed in turns (`--repeats` rounds) so a
change in machine load hits all of them alike; the medians are reported.
Time to first token (TTFT) is a 1-new-token generation (kgpt2: the first
piece out of `Generator.stream_ids`). Then kgpt2 runs other prompt lengths
and sampler settings and reports how many programs it compiled: the count
must not grow after the first call (`compiles`). keras-hub is shown paying
a compile for a new sampler object, the pitfall kgpt2 avoids.

Needs jax (or tensorflow), keras, keras-hub, numpy; torch + transformers for
the Hugging Face peer (`pip install -e .[bench]`); not TensorFlow with JAX.

    KERAS_BACKEND=jax python benchmarks/generate_latency.py --device cpu --out gen-cpu.json
    KERAS_BACKEND=jax python benchmarks/generate_latency.py --device gpu --dtype bfloat16 --out gen-gpu.json
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

ROOT = Path(__file__).resolve().parents[1]
VOCAB, LAYERS, HEADS, WIDTH, CONTEXT = 50257, 12, 12, 768, 1024


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="weights and compute (default: float32 on cpu, bfloat16 on gpu)")
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8 weights (Keras's Model.quantize) for the Keras peers")
    p.add_argument("--prompt-tokens", type=int, default=28)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds after the warm-up calls")
    p.add_argument("--peers", default="kgpt2,keras-hub,hf", help="comma list of kgpt2, keras-hub, hf")
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    a.dtype = a.dtype or ("float32" if a.device == "cpu" else "bfloat16")
    a.peers = [x.strip() for x in a.peers.split(",") if x.strip()]
    return a


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def prompts(n: int, count: int, seed: int = 0) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, VOCAB - 1, n)] for _ in range(count)]


class NoStop:
    """The tokenizer slot of `Generator`: only `eos_id`, never produced (-1)."""

    eos_id = -1

    def decode(self, ids):
        return " ".join(map(str, ids))


class Kgpt2:
    name = "kgpt2 Generator"

    def __init__(self, model, a):
        from kgpt2.generate import Generator, Settings

        self.gen, self.a = Generator(model, NoStop()), a
        self.greedy = Settings(sampler="greedy", max_new_tokens=a.new_tokens)
        self.first = Settings(sampler="greedy", max_new_tokens=1)

    def generate(self, ids):
        out = self.gen.generate_ids(ids, self.greedy)
        assert len(out) == self.a.new_tokens, len(out)

    def ttft(self, ids):
        stream = self.gen.stream_ids(ids, self.greedy)
        seconds, _ = timed(lambda: next(stream))
        stream.close()
        return seconds

    def sweep(self, n):
        """Other prompt lengths and sampler settings: time and compiled programs after each."""
        from kgpt2.generate import Settings

        rows = []
        cases = [("greedy", {}, n - 8), ("greedy", {}, n + 3), ("top_p", dict(temperature=0.8, top_p=0.95, top_k=50, seed=1), n),
                 ("top_p", dict(temperature=1.1, top_p=0.5, top_k=200, seed=2), n - 3),
                 ("top_k", dict(temperature=0.7, top_k=40, seed=3), n), ("random", dict(temperature=1.0, seed=4), n),
                 ("greedy", {}, n)]
        for i, (sampler, kw, length) in enumerate(cases):
            s = Settings(sampler=sampler, max_new_tokens=self.a.new_tokens, **kw)
            ids = prompts(length, 1, seed=100 + i)[0]
            seconds, out = timed(lambda: self.gen.generate_ids(ids, s))
            rows.append(dict(sampler=sampler, prompt_tokens=length, settings=kw, s=round(seconds, 4),
                             new_tokens=len(out), compiles=self.gen.compiles))
        return rows


class KerasHub:
    name = "keras-hub GPT2CausalLM.generate"

    def __init__(self, model, a):
        self.model, self.a = model, a
        model.compile(sampler="greedy")

    def _inputs(self, ids, total):
        import numpy as np

        token_ids = np.zeros((1, total), "int32")
        token_ids[0, :len(ids)] = ids
        mask = np.zeros((1, total), bool)
        mask[0, :len(ids)] = True
        return {"token_ids": token_ids, "padding_mask": mask}

    def generate(self, ids):
        out = self.model.generate(self._inputs(ids, len(ids) + self.a.new_tokens), stop_token_ids=None)
        assert out["token_ids"].shape[1] == len(ids) + self.a.new_tokens

    def ttft(self, ids):
        return timed(lambda: self.model.generate(self._inputs(ids, len(ids) + 1), stop_token_ids=None))[0]

    def new_sampler_call(self, ids):
        """A call after `compile(sampler=TopPSampler(...))`, as the seed's demo did per request."""
        import keras_hub

        self.model.compile(sampler=keras_hub.samplers.TopPSampler(p=0.95, k=50, temperature=0.8, seed=1))
        seconds = timed(lambda: self.generate(ids))[0]
        self.model.compile(sampler="greedy")
        return seconds


class HF:
    name = "HF transformers generate"

    def __init__(self, a):
        import torch
        import transformers

        self.torch, self.a = torch, a
        self.device = "cuda" if a.device == "gpu" else "cpu"
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=CONTEXT, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS)
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config).eval()
        self.model = model.to(self.device, dtype=getattr(torch, a.dtype))

    def _run(self, ids, new):
        with self.torch.inference_mode():
            x = self.torch.tensor([ids], device=self.device)
            out = self.model.generate(x, attention_mask=self.torch.ones_like(x), max_new_tokens=new, min_new_tokens=new,
                                      do_sample=False, pad_token_id=0)
            if self.device == "cuda":
                self.torch.cuda.synchronize()
        return out

    def generate(self, ids):
        out = self._run(ids, self.a.new_tokens)
        assert out.shape[1] == len(ids) + self.a.new_tokens

    def ttft(self, ids):
        return timed(lambda: self._run(ids, 1))[0]


def machine(a) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg()}
    import keras

    info["keras_backend"] = keras.backend.backend()
    info["devices"] = [str(d) for d in _devices()]
    for mod in ("jax", "keras", "keras_hub", "tensorflow", "torch", "transformers"):
        if sys.modules.get(mod) is not None:
            info[mod] = getattr(sys.modules[mod], "__version__", "?")
    return info


def _devices():
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.devices()
    return []


def write_report(name: str, a, results: dict) -> dict:
    """Print a benchmark's JSON report (args, machine, results) and write it to `a.out` if given."""
    report = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M"), "args": vars(a),
              "machine": machine(a), "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return report


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.path.insert(0, str(ROOT))
    import keras
    import keras_hub

    keras.config.set_dtype_policy(a.dtype)
    keras.utils.set_random_seed(0)  # the same random weights in every run: greedy tokens can be compared
    impls = []
    if {"kgpt2", "keras-hub"} & set(a.peers):
        backbone = keras_hub.models.GPT2Backbone(vocabulary_size=VOCAB, num_layers=LAYERS, num_heads=HEADS,
                                                 hidden_dim=WIDTH, intermediate_dim=4 * WIDTH,
                                                 max_sequence_length=CONTEXT, dropout=0.0)
        model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
        if a.quantize != "none":
            model.quantize(a.quantize)
        impls += [Kgpt2(model, a)] if "kgpt2" in a.peers else []
        impls += [KerasHub(model, a)] if "keras-hub" in a.peers else []
    if "hf" in a.peers:
        impls.append(HF(a))

    warm_prompts = prompts(a.prompt_tokens, 3, seed=1)
    timed_prompts = prompts(a.prompt_tokens, a.repeats, seed=2)
    results = {}
    for impl in impls:
        calls = [round(timed(lambda: impl.generate(ids))[0], 4) for ids in warm_prompts]
        impl.ttft(warm_prompts[0])  # compiles the 1-token shape where that is a new program
        results[impl.name] = {"calls_1_2_3_s": calls, "runs_s": [], "ttft_runs_s": []}
    for r in range(a.repeats):  # in turns, so load changes hit every implementation
        for impl in impls:
            seconds, _ = timed(lambda: impl.generate(timed_prompts[r]))
            results[impl.name]["runs_s"].append(round(seconds, 4))
            results[impl.name]["ttft_runs_s"].append(round(impl.ttft(timed_prompts[r]), 4))
    for impl in impls:
        res = results[impl.name]
        res["median_s"] = statistics.median(res["runs_s"])
        res["tok_s"] = round(a.new_tokens / res["median_s"], 1)
        res["ttft_median_ms"] = round(1000 * statistics.median(res["ttft_runs_s"]), 1)
        if isinstance(impl, Kgpt2):
            res["compiles_after_warmup"] = impl.gen.compiles
            res["greedy_tokens"] = impl.gen.generate_ids(timed_prompts[0], impl.greedy)  # to compare dtypes
            res["sweep"] = impl.sweep(a.prompt_tokens)
        if isinstance(impl, KerasHub):
            res["call_after_new_sampler_s"] = round(impl.new_sampler_call(timed_prompts[0]), 4)
    return write_report("generate_latency", a, results)


if __name__ == "__main__":
    main()
