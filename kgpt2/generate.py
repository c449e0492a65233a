"""`kgpt2 generate`: text from a run's checkpoint, on kgpt2's generation engine.

Prompts are tokenised with kgpt2's exact GPT-2 tokenizer and decoded by
`kgpt2.generation.engine.Engine` (KerasHub's GPT-2 layers with a key/value cache,
compiled prefill and a multi-token decode loop on the device; the same
engine serves many requests at once in `kgpt2 serve`). `generate` runs a
whole request in two launches (the prefill, then one decode loop that
stops on end-of-text by itself); `stream` yields the prefill's token at
once, then `STREAM_STEPS` tokens per launch. Samplers: greedy,
top_k, top_p (nucleus, with the top-k cut as well), random (temperature
only) and beam (KerasHub's `BeamSampler`, single requests). The defaults are
the seed project's demo settings: sampling, temperature 0.8, top-p 0.95,
top-k 50, max length 100. `max_new_tokens` (when > 0) wins over
`max_length` (prompt + new tokens), as in Hugging Face; both are capped by
the model's context.

Why not `GPT2CausalLM.generate`: it compiles one program per sampler object
(`compile(sampler=...)` drops it, so each new temperature, top-k or seed
costs a fresh XLA compile), prefills the whole `max_length` window and
computes logits for every position. Here sampler settings and seeds are
runtime values: after the first call, new prompts and settings reuse the
same programs (`Generator.compiles` counts them). A draw depends only on the
seed and the token's position, so `Generator.stream` yields exactly what
`Generator.generate` returns.

    >>> from kgpt2.generate import Settings
    >>> Settings(sampler="greedy", max_new_tokens=8).check()
    >>> # generate_from_run("checkpoints/quickstart", "The assert statement", sampler="greedy")
"""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Iterator

import numpy as np

from kgpt2.config import GenerateConfig
from kgpt2.errors import UserError
from kgpt2.generation.decoding import bucket, on_jax_cpu
from kgpt2.generation.engine import Engine, Sampling
from kgpt2.generation.fused_decode import BFLOAT16_PRODUCTS
from kgpt2.generation.sampling import filter_logits  # noqa: F401  (the old home of the sampling code)
from kgpt2.generation.templates import TEMPLATES, prompt_ids, render_prompt  # noqa: F401  (generate's callers import them here)
from kgpt2.model.quantize import quantize_backbone
from kgpt2.run import load_model, load_run_config

log = logging.getLogger("kgpt2")

SAMPLERS = ("greedy", "top_k", "top_p", "random", "beam")
MIN_CACHE_BUCKET = 128  # the key/value cache is a power of two of at least this
STREAM_STEPS = 8  # tokens per device launch while streaming (generate runs the whole request in one)


class Settings(GenerateConfig):
    """The run config's `[generate]` settings (its only copy), with checks and the engine's view."""

    @classmethod
    def from_config(cls, gen_cfg, **overrides) -> "Settings":
        values = {f.name: getattr(gen_cfg, f.name) for f in fields(cls) if hasattr(gen_cfg, f.name)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def check(self) -> None:
        """Check the settings again after a caller changed a field (the config checks them when built)."""
        GenerateConfig.__post_init__(self)

    def sampling(self) -> Sampling:
        """What the engine runs: `random` is top-k/top-p switched off, top_k leaves p at 1."""
        return Sampling(greedy=self.sampler == "greedy", temperature=self.temperature,
                        top_k=(1 << 30) if self.sampler == "random" else self.top_k,
                        top_p=self.top_p if self.sampler == "top_p" else 1.0, seed=self.seed)


class Generator:
    """Generation on one loaded model with kgpt2's tokenizer, one request at a time.

    A thin front of `Engine` (one slot, one engine per cache-size bucket). The
    model's variables are read at every launch, so restoring another
    checkpoint into the same model (the demo does) takes effect at once.
    `steps_per_launch` caps the decode steps of one launch (default: the
    cache size, so a whole request decodes in one launch).
    """

    def __init__(self, model, tokenizer, steps_per_launch: int | None = None, chunk: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.max_sequence_length = model.backbone.max_sequence_length
        self.steps_per_launch, self.chunk = steps_per_launch, chunk
        self._engines: dict[int, Engine] = {}
        self._capped: set[tuple] = set()  # limits already said to be capped by the context (_say_capped)

    @property
    def compiles(self) -> int:
        """Programs traced so far (a new prompt or setting must not add any)."""
        return sum(e.compiles for e in self._engines.values())

    def engine(self, total: int) -> Engine:
        """The one-slot engine whose cache holds `total` tokens (few sizes, few compiles)."""
        size = bucket(total, MIN_CACHE_BUCKET, self.max_sequence_length)
        if size not in self._engines:
            self._engines[size] = Engine(self.model, self.tokenizer, slots=1, cache_length=size,
                                         steps_per_launch=self.steps_per_launch or size, chunk=self.chunk)
        return self._engines[size]

    def _encode(self, prompt: str | list, s: Settings) -> list[int]:
        """The prompt's ids under the settings' template (generate_ids/stream_ids check and plan)."""
        return prompt_ids(self.tokenizer, prompt, s.template)  # chat: end-of-text as its token

    def _plan(self, ids: list[int], s: Settings) -> tuple[list[int], int]:
        ids = list(ids) or [self.tokenizer.eos_id]  # an empty prompt starts a new document
        total = len(ids) + s.max_new_tokens if s.max_new_tokens else max(s.max_length, len(ids) + 1)
        if total > self.max_sequence_length and len(ids) < self.max_sequence_length:
            self._say_capped(len(ids), s)
        total = min(total, self.max_sequence_length)
        if len(ids) >= total:
            raise UserError(f"the prompt is {len(ids)} tokens; it must be shorter than {total} "
                            f"(the model's context is {self.max_sequence_length}) to leave room to generate")
        return ids, total

    def _say_capped(self, prompt: int, s: Settings) -> None:
        """One line when the context cuts what was asked, once per setting (not per demo answer): either limit,
        as `--max-length 1000` on a 64-token model otherwise gave fewer tokens without a word."""
        key = ("new", s.max_new_tokens) if s.max_new_tokens else ("length", s.max_length)
        if key in self._capped:
            return
        self._capped.add(key)
        context, room = self.max_sequence_length, self.max_sequence_length - prompt
        if s.max_new_tokens:
            log.info("%d new tokens asked, %d fit: the model's context is %d tokens, the prompt %d",
                     s.max_new_tokens, room, context, prompt)
        else:
            log.info("max length %d asked (prompt and new tokens), %d fit: the model's context is %d tokens, "
                     "the prompt %d, so %d new at most", s.max_length, context, context, prompt, room)

    def _chunks(self, ids: list[int], s: Settings, steps: int | None) -> Iterator[list[int]]:
        """New token ids, a launch's worth at a time: the prefill's one, then up to `steps` (end-of-text not included)."""
        s.check()
        if s.sampler == "beam":
            raise UserError("beam search runs on whole requests: use generate_ids, not streaming of ids")
        ids, total = self._plan(ids, s)
        engine = self.engine(total)
        request = engine.submit(ids, s.sampling(), total)
        try:
            engine.step(0)  # the prefill alone: its token is the first out (time to first token)
            done = 0
            while True:
                if len(request.tokens) > done:
                    yield request.tokens[done:]
                    done = len(request.tokens)
                if request.finished:
                    return
                engine.step(steps)
        finally:
            request.cancel()  # a no-op when it ended; else (the caller stopped reading) its slot is freed

    def stream_ids(self, ids: list[int], settings: Settings) -> Iterator[int]:
        """New token ids as they are produced (end-of-text not included)."""
        for chunk in self._chunks(ids, settings, STREAM_STEPS):
            yield from chunk

    def generate_ids(self, ids: list[int], settings: Settings) -> list[int]:
        """All new token ids at once (end-of-text not included)."""
        settings.check()
        if settings.sampler == "beam":
            return self._beam(*self._plan(ids, settings), settings)
        return [t for chunk in self._chunks(ids, settings, None) for t in chunk]

    def generate(self, prompt: str | list, settings: Settings | None = None, **kw) -> str:
        """The continuation of `prompt` (the new text only); a list of chat messages is a chat prompt."""
        s = settings or Settings(**kw)
        return self.tokenizer.decode(self.generate_ids(self._encode(prompt, s), s))

    def stream(self, prompt: str | list, settings: Settings | None = None, **kw) -> Iterator[str]:
        """Pieces of the continuation as tokens are produced. The request is checked and planned at the call, not
        at the first piece: a prompt too long for the context, or the line that the context caps the length, comes
        before the caller prints anything (`kgpt2 generate --stream` printed the prompt, then that line in it)."""
        s = settings or Settings(**kw)
        s.check()
        ids = self._encode(prompt, s)
        self._plan(ids, s)
        return self._pieces(ids, s)

    def _pieces(self, ids: list[int], s: Settings) -> Iterator[str]:
        if s.sampler == "beam":
            yield self.tokenizer.decode(self.generate_ids(ids, s))  # beams are only final at the end
            return
        new: list[int] = []
        emitted = ""
        for token in self.stream_ids(ids, s):
            new.append(token)
            text = self.tokenizer.decode(new)
            # Hold back a partial UTF-8 character until it is complete.
            if not text.endswith("\ufffd") and len(text) > len(emitted):
                yield text[len(emitted):]
                emitted = text
        text = self.tokenizer.decode(new)
        if len(text) > len(emitted):
            yield text[len(emitted):]

    def _beam(self, ids: list[int], total: int, s: Settings) -> list[int]:
        """Beam search with KerasHub's BeamSampler (one compile per beam count and length)."""
        import keras_hub

        sampler = self.model.sampler
        if not (isinstance(sampler, keras_hub.samplers.BeamSampler) and sampler.num_beams == s.num_beams):
            # What keras-hub's compile(sampler=...) does for the sampler, without
            # also replacing the model's optimizer, loss and metrics.
            self.model.sampler = keras_hub.samplers.BeamSampler(num_beams=s.num_beams)
            self.model.generate_function = None
        # KerasHub stops when a stop token appears anywhere past the prompt, so
        # the padding must not be end-of-text (id 0 in small trained vocabularies).
        token_ids = np.full((1, total), 1 if self.tokenizer.eos_id == 0 else 0, dtype="int32")
        token_ids[0, :len(ids)] = ids
        mask = np.zeros((1, total), dtype=bool)
        mask[0, :len(ids)] = True
        out = self.model.generate({"token_ids": token_ids, "padding_mask": mask},
                                  stop_token_ids=[self.tokenizer.eos_id])
        out_ids, out_mask = np.asarray(out["token_ids"][0]), np.asarray(out["padding_mask"][0])
        new = [int(t) for t, m in zip(out_ids[len(ids):], out_mask[len(ids):]) if m]
        return new[:-1] if new and new[-1] == self.tokenizer.eos_id else new


WEIGHTS = ("auto", "float32", "bfloat16", "int8")


def load_for_generation(run_dir, checkpoint: str = "latest", weights: str | None = None):
    """(model, tokenizer, cfg) at a checkpoint, in the weights `weights` or the run's `generate.weights` name.

    "auto": the training policy on this device (float32 on CPU); "float32" and
    "bfloat16": the model built in that Keras policy (bfloat16 weights and
    key/value cache); "int8": built as "auto", restored, then quantised with
    Keras's `quantize("int8")` (per-channel int8 kernels and embedding; a run
    whose base is already quantised, `model.quantize`, is left as it is).
    "bfloat16" on a JAX CPU, which has no bfloat16 arithmetic: the weights
    rounded to bfloat16 in a float32 model, decoded from bfloat16 copies of
    them in float32 (kgpt2.generation.fused_decode; ~1.6x the tokens/s of float32, and
    more memory: the float32 model plus the copies).
    """
    choice = weights or load_run_config(run_dir).generate.weights
    if choice not in WEIGHTS:
        raise UserError(f"generate.weights must be one of {', '.join(WEIGHTS)}; got {choice!r}")
    if choice == "bfloat16" and on_jax_cpu():
        model, tokenizer, cfg = load_model(run_dir, checkpoint, "float32")
        round_to_bfloat16(model)
        setattr(model, BFLOAT16_PRODUCTS, True)
        return model, tokenizer, cfg
    model, tokenizer, cfg = load_model(run_dir, checkpoint, choice if choice in ("float32", "bfloat16") else None)
    if choice == "int8" and not cfg.model.quantize:
        quantize_backbone(model.backbone, "int8")
    return model, tokenizer, cfg


def round_to_bfloat16(model) -> None:
    """Every float weight of `model` rounded to the nearest bfloat16 value, kept in its own dtype."""
    import keras

    for v in model.weights:
        if "float" in keras.backend.standardize_dtype(v.dtype):
            v.assign(keras.ops.cast(keras.ops.cast(v, "bfloat16"), v.dtype))


def generate_from_run(run_dir, prompt: str, checkpoint: str = "latest", weights: str | None = None, **settings) -> str:
    model, tokenizer, cfg = load_for_generation(run_dir, checkpoint, weights)
    s = Settings.from_config(cfg.generate, **settings)
    return Generator(model, tokenizer).generate(prompt, s)
