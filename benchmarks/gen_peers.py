"""The implementations benchmarks/generate_latency.py (and serve_throughput.py) time, each with the same calls.

Batch 1: `Kgpt2` (kgpt2's `Generator`), `KerasHub` (`GPT2CausalLM.generate`),
`HF` (transformers `generate`). N streams: `EnginePeer` (kgpt2's `Engine`, N
slots) and `HFBatch` (one `generate` call on the N prompts). Every call makes
exactly the asked number of greedy tokens (end-of-text never stops early).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

SHAPE_124M = dict(vocabulary=50257, layers=12, heads=12, width=768, context=1024)
SHAPE_TINY = dict(vocabulary=1000, layers=2, heads=2, width=64, context=256)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def prompts(n: int, count: int, vocabulary: int, seed: int = 0) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, vocabulary - 1, n)] for _ in range(count)]


class NoStop:
    """The tokenizer slot of `Generator` / `Engine`: only `eos_id`, never produced (-1)."""

    eos_id = -1

    def decode(self, ids):
        return ""  # no text work: the benchmark times the decoding


def build_model(shape: dict, quantize: str = "none"):
    """A keras-hub GPT2CausalLM of `shape`, random weights seeded (greedy tokens comparable across runs)."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=shape["vocabulary"], num_layers=shape["layers"], num_heads=shape["heads"],
        hidden_dim=shape["width"], intermediate_dim=4 * shape["width"], max_sequence_length=shape["context"], dropout=0.0)
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    hf_dir = tempfile.mkdtemp(prefix="kgpt2-bench-hf-")
    try:  # the same weights for the HF peer (before any int8 quantisation)
        backbone.export_to_transformers(hf_dir)
    except Exception as e:  # noqa: BLE001  (the HF peer then gets its own random weights)
        print(f"export to transformers failed ({type(e).__name__}: {e}); HF gets random weights", flush=True)
        hf_dir = None
    if quantize == "bfloat16":  # what `--weights bfloat16` loads on a JAX CPU (kgpt2.generate.load_for_generation)
        from kgpt2.generate import round_to_bfloat16
        from kgpt2.generation.fused_decode import BFLOAT16_PRODUCTS

        round_to_bfloat16(model)
        setattr(model, BFLOAT16_PRODUCTS, True)
    elif quantize != "none":
        model.quantize(quantize)
    return model, hf_dir


class GeneratorPeer:
    """A kgpt2 generator (`self.gen`, `self.greedy`, `self.a` set by the subclass) timed three ways."""

    def generate(self, ids):
        out = self.gen.generate_ids(ids, self.greedy)
        assert len(out) == self.a.new_tokens, len(out)
        return out

    def ttft(self, ids):
        stream = self.gen.stream_ids(ids, self.greedy)
        seconds, _ = timed(lambda: next(stream))
        stream.close()
        return seconds

    def stream(self, ids):
        out = list(self.gen.stream_ids(ids, self.greedy))
        assert len(out) == self.a.new_tokens


class Kgpt2(GeneratorPeer):
    def __init__(self, model, a, chunk=None, programs_options=None, label="", blocks="auto", norm=None):
        from kgpt2.generate import Generator, Settings

        self.gen, self.a = Generator(model, NoStop(), chunk=chunk), a
        if programs_options or blocks != "auto":  # XLA options or decoder blocks of a benchmark variant
            self.gen.engine = self._engine_with(programs_options, blocks)
        self.greedy = Settings(sampler="greedy", max_new_tokens=a.new_tokens)
        programs = self.gen.engine(a.prompt_tokens + a.new_tokens).programs
        if norm is not None:  # before the first call: the programs compile then
            programs.blocks.one_pass_norm = norm == "one-pass"
        kind = "fused" if programs.blocks is not None else "keras-hub"
        if programs.blocks is not None:
            kind += ", one-pass norm" if programs.blocks.one_pass_norm else ", two-pass norm"
        self.name = f"kgpt2 Generator (chunk {programs.chunk}, {kind} blocks{', XLA ' + label if label else ''})"

    def _engine_with(self, options, blocks="auto"):
        from kgpt2.generate import MIN_CACHE_BUCKET
        from kgpt2.generation.decoding import Programs, bucket
        from kgpt2.generation.engine import Engine

        gen, engines = self.gen, {}

        def engine(total):
            size = bucket(total, MIN_CACHE_BUCKET, gen.max_sequence_length)
            if size not in engines:
                programs = Programs(gen.model, 1, size, size, gen.chunk, compiler_options=options, blocks=blocks)
                engines[size] = gen._engines[size] = Engine(gen.model, gen.tokenizer, slots=1, cache_length=size,
                                                            programs=programs)
            return engines[size]

        return engine



class Previous(GeneratorPeer):
    """The decoder kgpt2 had before the engine (benchmarks/baselines): one prefill, then one decode loop whose
    condition and greedy/sampling branch are decided on the device at every token."""

    name = "kgpt2 before the engine (11686a9)"

    def __init__(self, model, a):
        sys.path.insert(0, str(Path(__file__).resolve().parent / "baselines"))
        import generate_before_engine as old

        self.gen, self.a = old.Generator(model, NoStop()), a
        self.greedy = old.Settings(sampler="greedy", max_new_tokens=a.new_tokens)



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
        import numpy as np

        out = self.model.generate(self._inputs(ids, len(ids) + self.a.new_tokens), stop_token_ids=None)
        return [int(t) for t in np.asarray(out["token_ids"])[0, len(ids):]]

    def ttft(self, ids):
        return timed(lambda: self.model.generate(self._inputs(ids, len(ids) + 1), stop_token_ids=None))[0]


class HF:
    name = "HF transformers generate"

    def __init__(self, a, hf_dir, shape):
        import torch
        import transformers

        self.torch, self.a = torch, a
        self.device = "cuda" if a.device == "gpu" else "cpu"
        dtype = getattr(torch, a.dtype)
        if hf_dir:
            model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir, dtype=dtype)
        else:
            config = transformers.GPT2Config(vocab_size=shape["vocabulary"], n_positions=shape["context"],
                                             n_embd=shape["width"], n_layer=shape["layers"], n_head=shape["heads"])
            torch.manual_seed(0)
            model = transformers.GPT2LMHeadModel(config)
        self.same_weights = bool(hf_dir)
        self.model = model.eval().to(self.device, dtype=dtype)

    def _run(self, batch, new):
        with self.torch.inference_mode():
            x = self.torch.tensor(batch, device=self.device)
            out = self.model.generate(x, attention_mask=self.torch.ones_like(x), max_new_tokens=new, min_new_tokens=new,
                                      do_sample=False, pad_token_id=0)
            if self.device == "cuda":
                self.torch.cuda.synchronize()
        assert out.shape == (len(batch), len(batch[0]) + new)
        return out

    def generate(self, ids):
        return [int(t) for t in self._run([ids], self.a.new_tokens)[0, len(ids):]]

    def ttft(self, ids):
        return timed(lambda: self._run([ids], 1))[0]

    def run(self, batch, steps=None):
        self._run(batch, self.a.new_tokens)


class EnginePeer:
    """kgpt2's engine with N slots; `run` decodes N streams with `steps` tokens per launch."""

    name = "kgpt2 Engine"

    def __init__(self, model, a, max_steps: int, compiler_options=None, blocks="auto", chunk=None):
        self.model, self.a, self.max_steps, self.engines = model, a, max_steps, {}
        self.options, self.blocks, self.chunk = compiler_options, blocks, chunk

    def engine(self, n):
        from kgpt2.generation.decoding import Programs, bucket
        from kgpt2.generation.engine import Engine

        if n not in self.engines:  # one engine per slot count (its own compiled programs)
            cache = bucket(self.a.prompt_tokens + self.a.new_tokens, 128, self.model.backbone.max_sequence_length)
            programs = Programs(self.model, n, cache, self.max_steps, self.chunk, compiler_options=self.options,
                                blocks=self.blocks)
            self.engines[n] = Engine(self.model, NoStop(), slots=n, cache_length=cache, programs=programs,
                                     steps_per_launch=16, full_steps_per_launch=64)
        return self.engines[n]

    def run(self, batch, steps=None):
        """All streams to the end; returns the seconds the admission (one batched prefill) took."""
        from kgpt2.generation.engine import Sampling

        engine = self.engine(len(batch))
        requests = [engine.submit(ids, Sampling(), len(ids) + self.a.new_tokens) for ids in batch]
        prefill, _ = timed(lambda: engine.step(0))
        while not all(r.finished for r in requests):
            engine.step(steps)
        assert all(len(r.tokens) == self.a.new_tokens for r in requests)
        return prefill
