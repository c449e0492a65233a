# The decoder kgpt2/generate.py had before the engine (git show 8902a00^:kgpt2/generate.py), verbatim below this
# comment: the batch-1 baseline of benchmarks/generate_latency.py (peer "previous"). Not part of kgpt2.
"""`kgpt2 generate`: text from a run's checkpoint, decoded with compiled, reusable steps.

Prompts are tokenised with kgpt2's exact GPT-2 tokenizer and decoded on the
KerasHub model's own layers (embeddings, `TransformerDecoder`s with their
key/value caches, tied output projection). Samplers: greedy, top_k, top_p
(nucleus, with the top-k cut as well), random (temperature only) and beam
(KerasHub's `BeamSampler`). The defaults are the seed project's demo
settings: sampling, temperature 0.8, top-p 0.95, top-k 50, max length 100.
`max_new_tokens` (when > 0) wins over `max_length` (prompt + new tokens), as
in Hugging Face; both are capped by the model's context.

Why not `GPT2CausalLM.generate`: it compiles one program per sampler object
(`compile(sampler=...)` drops it, so each new temperature, top-k or seed
costs a fresh XLA compile), prefills the whole `max_length` window and
computes logits for every position. kgpt2 compiles two programs per cache
size instead, `prefill` (the prompt, padded to a power of two, logits of its
last token only) and `decode` (a loop of one-token steps on a fixed-size
cache), and passes the sampler settings and seed as runtime values: after
the first call, new prompts and settings reuse the same programs
(`Generator.compiles` counts them; benchmarks/generate_latency.py shows it).

`Generator.stream` yields text as tokens are produced; it runs the same
compiled `decode` program one token at a time, so for the same settings and
seed it produces exactly what `Generator.generate` returns.

    >>> from kgpt2.generate import generate_from_run
    >>> # generate_from_run("checkpoints/quickstart", "The assert statement", sampler="greedy")
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterator

import numpy as np

from kgpt2.errors import UserError

SAMPLERS = ("greedy", "top_k", "top_p", "random", "beam")
TEMPLATES = ("plain", "instruction")
MIN_PROMPT_BUCKET = 32  # prompts are padded to a power of two of at least this
MIN_CACHE_BUCKET = 128  # and the key/value cache to a power of two of at least this
NEG = -1.0e9  # logit of an excluded token: exp() underflows to exactly 0


def render_prompt(prompt: str, template: str = "plain", input_text: str = "") -> str:
    """Apply a prompt template; `instruction` is the Alpaca template training uses."""
    if template == "plain":
        return prompt
    if template == "instruction":
        from kgpt2.instructions import format_prompt

        return format_prompt(prompt, input_text)
    raise UserError(f"unknown prompt template '{template}' (one of: {', '.join(TEMPLATES)})")


@dataclass
class Settings:
    sampler: str = "top_p"
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    max_length: int = 100  # prompt + new tokens
    max_new_tokens: int = 0  # 0 = up to max_length
    seed: int = 0
    num_beams: int = 5
    template: str = "plain"

    @classmethod
    def from_config(cls, gen_cfg, **overrides) -> "Settings":
        values = {f.name: getattr(gen_cfg, f.name) for f in fields(cls) if hasattr(gen_cfg, f.name)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def check(self) -> None:
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler '{self.sampler}' (one of: {', '.join(SAMPLERS)})")
        if self.template not in TEMPLATES:
            raise UserError(f"unknown prompt template '{self.template}' (one of: {', '.join(TEMPLATES)})")
        if not self.temperature > 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 1:
            raise UserError(f"top_k must be at least 1, got {self.top_k}")
        if self.max_length < 1 or self.max_new_tokens < 0:
            raise UserError(f"max_length must be >= 1 and max_new_tokens >= 0, got {self.max_length} "
                            f"and {self.max_new_tokens}")
        if self.num_beams < 1:
            raise UserError(f"num_beams must be at least 1, got {self.num_beams}")


def bucket(n: int, smallest: int, cap: int) -> int:
    """The power of two >= max(n, smallest), capped at `cap`: few shapes, few compiles."""
    size = smallest
    while size < n:
        size *= 2
    return min(size, cap)


# Sampling, traced into the compiled programs ----------------------------------
# KerasHub's samplers hold temperature/p/k as Python attributes and take k as a
# static shape (`ops.top_k(probs, k)`), so every new setting is a new program;
# their nucleus also sorts the whole vocabulary (50,257 entries) every token,
# which on a small CPU costs about as much as GPT-2's forward step. Here the
# settings are tensors and the top-k / top-p cut-offs are found by bisection.

def _largest_threshold(bits, enough, steps: int = 31):
    """The largest t in [0, max(bits)] with `enough(t)`; `enough(0)` is assumed.

    `bits` are float32 probabilities viewed as int32: for values >= 0 that view
    keeps their order, so 31 halvings of [0, 2^31) land on an exact value.
    """
    from keras import ops

    lo = ops.zeros(ops.shape(bits)[:1], "int32")
    hi = ops.max(bits, axis=-1)

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo + 1) // 2
        ok = enough(mid[:, None])
        return ops.where(ok, mid, lo), ops.where(ok, hi, mid - 1)

    lo, _ = ops.fori_loop(0, steps, halve, (lo, hi))
    return lo


def filter_logits(logits, temperature, top_k, top_p):
    """Logits / temperature with everything outside the top-k and the nucleus set to -1e9.

    Keeps the `top_k` most likely tokens and, of those, the smallest set whose
    probability reaches `top_p` (both cuts as in KerasHub's TopPSampler(p, k));
    tokens tied at a cut-off are all kept. `top_k >= vocabulary` and
    `top_p = 1` switch the cuts off. Works on a batch `[B, vocabulary]`.
    """
    from keras import ops

    scaled = ops.cast(logits, "float32") / ops.cast(temperature, "float32")
    probs = ops.softmax(scaled, axis=-1)
    bits = ops.view(probs, "int32")
    top_k, top_p = ops.cast(top_k, "int32"), ops.cast(top_p, "float32")
    k_cut = _largest_threshold(bits, lambda t: ops.sum(ops.cast(bits >= t, "int32"), axis=-1) >= top_k)
    p_cut = _largest_threshold(bits, lambda t: ops.sum(ops.where(bits >= t, probs, 0.0), axis=-1) >= top_p)
    p_cut = ops.where(top_p >= 1.0, 0, p_cut)  # float32 sums of the tail can round away: p = 1 keeps all
    keep = bits >= ops.maximum(k_cut, p_cut)[:, None]
    return ops.where(keep, scaled, NEG)


def sample_next(logits, greedy, temperature, top_k, top_p, seed_generator):
    """One next token per row: argmax when `greedy`, else a draw from `filter_logits`."""
    import keras
    from keras import ops

    def draw():
        kept = filter_logits(logits, temperature, top_k, top_p)
        return ops.cast(keras.random.categorical(kept, 1, seed=seed_generator, dtype="int32")[:, 0], "int32")

    return ops.cond(greedy, lambda: ops.cast(ops.argmax(logits, axis=-1), "int32"), draw)


def _compiled(fn, static=(), donate=()):
    """`fn` compiled for the backend: jax.jit, tf.function (XLA), or eager on torch."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn, static_argnums=static, donate_argnums=donate)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)  # Python ints (cache size) retrace per value
    return fn


class Generator:
    """Generation on one loaded model with kgpt2's tokenizer.

    The model's variables are read at every step, so restoring another
    checkpoint into the same model (the demo does) takes effect at once.
    """

    def __init__(self, model, tokenizer):
        import keras

        self.model, self.tokenizer = model, tokenizer
        self.max_sequence_length = model.backbone.max_sequence_length
        self.compiles = 0  # programs traced so far (a new prompt or setting must not add any)
        self._seeds = keras.random.SeedGenerator(0)  # its state is set per token: [seed, position]
        self._prefill_fn = _compiled(self._prefill, static=(4,))
        self._decode_fn = _compiled(self._decode, donate=(1, 2))

    # Planning -----------------------------------------------------------------
    def _encode(self, prompt: str, s: Settings) -> list[int]:
        """The prompt's ids under the settings' template (generate_ids/stream_ids check and plan)."""
        return self.tokenizer.encode(render_prompt(prompt, s.template))

    def _plan(self, ids: list[int], s: Settings) -> tuple[list[int], int]:
        ids = list(ids) or [self.tokenizer.eos_id]  # an empty prompt starts a new document
        total = len(ids) + s.max_new_tokens if s.max_new_tokens else max(s.max_length, len(ids) + 1)
        total = min(total, self.max_sequence_length)
        if len(ids) >= total:
            raise UserError(f"the prompt is {len(ids)} tokens; it must be shorter than {total} "
                            f"(the model's context is {self.max_sequence_length}) to leave room to generate")
        return ids, total

    @staticmethod
    def _sampling(s: Settings, vocabulary: int) -> tuple:
        """The sampler settings as runtime values (one compiled program for all of them)."""
        k = vocabulary if s.sampler == "random" else min(s.top_k, vocabulary)
        p = s.top_p if s.sampler == "top_p" else 1.0
        return (np.bool_(s.sampler == "greedy"), np.float32(s.temperature), np.int32(k), np.float32(p),
                np.int32(s.seed & 0x7FFFFFFF))

    # Traced programs ------------------------------------------------------------
    def _scope(self, values, seed_state=None):
        """Run the model on `values` (JAX traces them as arguments, not constants)."""
        import keras

        mapping = list(zip(self.model.variables, values))
        if seed_state is not None:
            mapping.append((self._seeds.state, seed_state))
        return keras.StatelessScope(state_mapping=mapping)

    def _forward(self, token_ids, caches, index):
        """Hidden states of `token_ids` at positions index.. and the updated per-layer caches.

        What `GPT2CausalLM.call_with_cache` does, with one cache per layer (no
        stacking copies in the loop) and no output projection (done only where needed).
        """
        b = self.model.backbone
        tokens = b.token_embedding(token_ids)
        x = b.embeddings_add((tokens, b.position_embedding(tokens, start_index=index)))
        new_caches = []
        for layer, cache in zip(b.transformer_layers, caches):
            x, cache = layer(x, self_attention_cache=cache, self_attention_cache_update_index=index)
            new_caches.append(cache)
        return x, new_caches

    def _next_token(self, values, hidden, position, sampling):
        """Sample the token at `position` from the last hidden state (seeded by seed and position)."""
        from keras import ops

        b = self.model.backbone
        with self._scope(values):
            logits = b.token_embedding(b.layer_norm(hidden), reverse=True)[:, 0, :]
        greedy, temperature, top_k, top_p, seed = sampling
        seed_state = ops.cast(ops.stack([seed, ops.cast(position, "int32")]), self._seeds.state.dtype)
        with self._scope([], seed_state):
            return sample_next(logits, greedy, temperature, top_k, top_p, self._seeds)

    def _prefill(self, values, prompt_ids, length, sampling, cache_length):
        """Cache the prompt (padded to a bucket), sample the first new token at `length`."""
        from keras import ops

        self.compiles += 1
        b = self.model.backbone
        shape = (1, 2, cache_length, b.num_heads, b.hidden_dim // b.num_heads)
        caches = [ops.zeros(shape, self.model.compute_dtype) for _ in b.transformer_layers]
        with self._scope(values):
            hidden, caches = self._forward(prompt_ids, caches, 0)
        # A gather, not a slice: TensorFlow's XLA bridge treats slice offsets as
        # compile-time constants and would compile once per prompt length.
        last = ops.take(hidden, ops.reshape(length - 1, (1,)), axis=1)
        first = self._next_token(values, last, length, sampling)
        token_ids = ops.slice_update(ops.zeros((1, cache_length), "int32"), [0, 0], prompt_ids)
        token_ids = ops.slice_update(token_ids, [0, length], ops.reshape(first, (1, 1)))
        return token_ids, caches

    def _decode(self, values, token_ids, caches, index, stop, sampling, eos_id):
        """From the token at `index`, add tokens until position `stop - 1` or end-of-text."""
        from keras import ops

        self.compiles += 1

        def newest(token_ids, index):
            return ops.reshape(ops.slice(token_ids, [0, index], [1, 1]), ())

        def more(token_ids, caches, index):
            return ops.logical_and(index + 1 < stop, ops.not_equal(newest(token_ids, index), eos_id))

        def step(token_ids, caches, index):
            with self._scope(values):
                hidden, caches = self._forward(ops.slice(token_ids, [0, index], [1, 1]), caches, index)
            token = self._next_token(values, hidden, index + 1, sampling)
            token_ids = ops.slice_update(token_ids, [0, index + 1], ops.reshape(token, (1, 1)))
            return token_ids, caches, index + 1

        return ops.while_loop(more, step, (token_ids, caches, ops.cast(index, "int32")))

    # Running ----------------------------------------------------------------------
    def _start(self, ids: list[int], total: int, s: Settings):
        """Prefill; returns (state, position of the first new token)."""
        cache_length = bucket(total, MIN_CACHE_BUCKET, self.max_sequence_length)
        prompt_length = bucket(len(ids), MIN_PROMPT_BUCKET, cache_length)
        prompt = np.zeros((1, prompt_length), "int32")
        prompt[0, :len(ids)] = ids
        values = [v.value for v in self.model.variables]
        sampling = self._sampling(s, int(self.model.backbone.vocabulary_size))
        token_ids, caches = self._prefill_fn(values, prompt, np.int32(len(ids)), sampling, cache_length)
        return [token_ids, caches, sampling], len(ids)

    def _advance(self, state, index: int, stop: int) -> int:
        token_ids, caches, sampling = state
        values = [v.value for v in self.model.variables]
        state[0], state[1], end = self._decode_fn(values, token_ids, caches, np.int32(index), np.int32(stop),
                                                  sampling, np.int32(self.tokenizer.eos_id))
        return int(end)

    def stream_ids(self, ids: list[int], settings: Settings) -> Iterator[int]:
        """New token ids one at a time (end-of-text not included)."""
        from keras import ops

        settings.check()
        ids, total = self._plan(ids, settings)
        state, index = self._start(ids, total, settings)
        while True:
            token = int(ops.convert_to_numpy(state[0])[0, index])
            if token == self.tokenizer.eos_id:
                return
            yield token
            if index + 1 >= total:
                return
            index = self._advance(state, index, index + 2)

    def generate_ids(self, ids: list[int], settings: Settings) -> list[int]:
        """All new token ids at once (end-of-text not included)."""
        from keras import ops

        settings.check()
        if settings.sampler == "beam":
            return self._beam(*self._plan(ids, settings), settings)
        ids, total = self._plan(ids, settings)
        state, index = self._start(ids, total, settings)
        end = self._advance(state, index, total)
        new = [int(t) for t in ops.convert_to_numpy(state[0])[0, index:end + 1]]
        return new[:-1] if new and new[-1] == self.tokenizer.eos_id else new

    def generate(self, prompt: str, settings: Settings | None = None, **kw) -> str:
        """The continuation of `prompt` (the new text only)."""
        s = settings or Settings(**kw)
        return self.tokenizer.decode(self.generate_ids(self._encode(prompt, s), s))

    def stream(self, prompt: str, settings: Settings | None = None, **kw) -> Iterator[str]:
        """Yield pieces of the continuation as tokens are produced."""
        s = settings or Settings(**kw)
        ids = self._encode(prompt, s)
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


def generate_from_run(run_dir, prompt: str, checkpoint: str = "latest", **settings) -> str:
    from kgpt2.runs import load_model

    model, tokenizer, cfg = load_model(run_dir, checkpoint)
    s = Settings.from_config(cfg.generate, **settings)
    return Generator(model, tokenizer).generate(prompt, s)
