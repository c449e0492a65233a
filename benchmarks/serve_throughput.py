"""Aggregate decode throughput of kgpt2's batched engine at N concurrent streams, against HF `generate`.

GPT-2 124M shape (random weights), each stream a different random
`--prompt-tokens` prompt and exactly `--new-tokens` greedy tokens (end-of-text
never stops early). kgpt2: N requests submitted together to an `Engine` with
N slots, stepped until all finish (what `kgpt2 serve` does per batch, without
HTTP). Hugging Face: one `generate` call on the same N prompts as a batch.
Both warm up once at each N, then run `--repeats` timed rounds in turns; the
medians are reported as tokens/s (N x new tokens / seconds), with kgpt2's
time to first token at N = 1 (submit -> first token out of the prefill).

    KERAS_BACKEND=jax python benchmarks/serve_throughput.py --device cpu --streams 1,8 --new-tokens 16
    KERAS_BACKEND=jax python benchmarks/serve_throughput.py --device gpu --streams 1,8,32,64 --out serve-gpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from generate_latency import CONTEXT, HEADS, HF, LAYERS, VOCAB, WIDTH, NoStop, prompts, timed, write_report  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    p.add_argument("--streams", default="1,8,32,64", help="comma list of concurrent stream counts")
    p.add_argument("--prompt-tokens", type=int, default=28)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--steps-per-launch", type=int, default=16, help="decode steps per device launch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peers", default="kgpt2,hf")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    a.dtype = a.dtype or ("float32" if a.device == "cpu" else "bfloat16")
    a.streams = [int(x) for x in a.streams.split(",")]
    a.peers = [x.strip() for x in a.peers.split(",") if x.strip()]
    return a


class EnginePeer:
    name = "kgpt2 Engine"

    def __init__(self, model, a):
        self.model, self.a, self.engines = model, a, {}

    def engine(self, n):
        from kgpt2.engine import Engine

        if n not in self.engines:  # one engine per slot count (its own compiled programs)
            self.engines[n] = Engine(self.model, NoStop(), slots=n, cache_length=self._cache(),
                                     steps_per_launch=self.a.steps_per_launch)
        return self.engines[n]

    def _cache(self):
        size = 128
        while size < self.a.prompt_tokens + self.a.new_tokens:
            size *= 2
        return min(size, CONTEXT)

    def run(self, batch):
        from kgpt2.engine import Sampling

        engine = self.engine(len(batch))
        requests = [engine.submit(ids, Sampling(), len(ids) + self.a.new_tokens) for ids in batch]
        while not all(r.finished for r in requests):
            engine.step()
        assert all(len(r.tokens) == self.a.new_tokens for r in requests)

    def ttft(self, ids):
        from kgpt2.engine import Sampling

        engine = self.engine(1)
        start = time.perf_counter()
        request = engine.submit(ids, Sampling(), len(ids) + self.a.new_tokens)
        engine.step(0)  # admission only: the prefill samples the first token
        seconds = time.perf_counter() - start
        assert len(request.tokens) == 1
        request.cancel()
        engine.step(1)
        return seconds


class HFPeer(HF):
    def run(self, batch):
        with self.torch.inference_mode():
            x = self.torch.tensor(batch, device=self.device)
            out = self.model.generate(x, attention_mask=self.torch.ones_like(x), max_new_tokens=self.a.new_tokens,
                                      min_new_tokens=self.a.new_tokens, do_sample=False, pad_token_id=0)
            if self.device == "cuda":
                self.torch.cuda.synchronize()
        assert out.shape == (len(batch), self.a.prompt_tokens + self.a.new_tokens)


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.path.insert(0, str(HERE.parent))
    import keras
    import keras_hub

    keras.config.set_dtype_policy(a.dtype)
    peers = []
    if "kgpt2" in a.peers:
        backbone = keras_hub.models.GPT2Backbone(vocabulary_size=VOCAB, num_layers=LAYERS, num_heads=HEADS,
                                                 hidden_dim=WIDTH, intermediate_dim=4 * WIDTH,
                                                 max_sequence_length=CONTEXT, dropout=0.0)
        peers.append(EnginePeer(keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None), a))
    if "hf" in a.peers:
        peers.append(HFPeer(a))
    results = {p.name: {} for p in peers}
    for n in a.streams:
        for p in peers:
            warm = timed(lambda: p.run(prompts(a.prompt_tokens, n, seed=n)))[0]
            results[p.name][n] = {"warmup_s": round(warm, 3), "runs_s": []}
        for r in range(a.repeats):  # in turns, so load changes hit every peer alike
            for p in peers:
                batch = prompts(a.prompt_tokens, n, seed=1000 * n + r)
                results[p.name][n]["runs_s"].append(round(timed(lambda: p.run(batch))[0], 4))
        for p in peers:
            row = results[p.name][n]
            row["tok_s"] = round(n * a.new_tokens / statistics.median(row["runs_s"]), 1)
    for p in peers:
        if isinstance(p, EnginePeer) and 1 in a.streams:
            ttft = [p.ttft(ids) for ids in prompts(a.prompt_tokens, a.repeats, seed=7)]
            results[p.name]["ttft_median_ms"] = round(1000 * statistics.median(ttft), 1)
            results[p.name]["compiles"] = {n: e.compiles for n, e in p.engines.items()}
    return write_report("serve_throughput", a, results)


if __name__ == "__main__":
    main()
