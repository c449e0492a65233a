"""Several prompts decoded as one batch, on weights passed in, one token at a time.

`BatchDecoder` is `kgpt2.generate.Generator` widened to a batch: the rows of
one call share the weights, the sampler settings and the prompt's token
length (so they share the cache index), and each row keeps its own seed. A
row draws its token exactly as `Generator` would for that prompt and seed
(the same `[seed, position]` seed state on its own logits), so batching
changes when an answer arrives, not what it says.

The weights are an argument (`values`, one array per `model.variables`), not
the model's variables: two checkpoints of one base are two value lists on
one built model, decoded without swapping anything (kgpt2.model_pool keeps
them). The batch size is padded to a power of two so a handful of programs
serve every batch. This is the demo's stop-gap until the generation engine
(continuous batching, `kgpt2 serve`) replaces it behind kgpt2.answerer.

`IncrementalText` turns token ids into text as they come, holding back the
bytes of a UTF-8 character split across tokens instead of showing U+FFFD.

    >>> t = IncrementalText(lambda i: [b"\\xc3", b"\\xa9", b"!"][i])
    >>> [t.push(0), t.push(1), t.push(2), t.finish()]
    ['', 'é', '!', '']
"""

from __future__ import annotations

import codecs
from functools import lru_cache

import numpy as np

from kgpt2.generate import MIN_CACHE_BUCKET, MIN_PROMPT_BUCKET, Generator, Settings, bucket, filter_logits


class IncrementalText:
    """Text of a growing token sequence; incomplete UTF-8 bytes wait for their end."""

    def __init__(self, token_bytes):
        self.token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._utf8.decode(self.token_bytes(token))

    def finish(self) -> str:
        # An answer cut off inside a character: drop the orphan bytes rather than show U+FFFD.
        self._utf8.reset()
        return ""


@lru_cache(maxsize=1)
def _gpt2_byte_decoder() -> dict:
    """GPT-2's byte-level alphabet (the map in OpenAI's encoder.py) from character back to byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def token_bytes_of(tokenizer):
    """A function id -> the token's bytes (empty for end-of-text and unknown ids)."""
    vocabulary = getattr(tokenizer, "vocabulary", None)
    if not isinstance(vocabulary, dict):  # e.g. the character tokenizer: each id is whole characters
        return lambda i: b"" if i == tokenizer.eos_id else tokenizer.decode([i]).encode("utf-8")
    decoder = _gpt2_byte_decoder()
    by_id = {i: t for t, i in vocabulary.items()}

    def token_bytes(i: int) -> bytes:
        token = by_id.get(int(i))
        if token is None or int(i) == tokenizer.eos_id:
            return b""
        if all(c in decoder for c in token):
            return bytes(decoder[c] for c in token)
        return token.encode("utf-8")  # a special token spelt in plain text

    return token_bytes


class BatchDecoder(Generator):
    """`Generator`'s compiled prefill / decode programs for a batch of equal-length prompts."""

    def _next_token(self, values, hidden, position, sampling):
        """Each row's token: the top-k / top-p cut for the whole batch at once, then one draw
        per row seeded `[seed, position]`, exactly as `Generator` draws for that row alone."""
        import keras
        from keras import ops

        b = self.model.backbone
        with self._scope(values):
            logits = b.token_embedding(b.layer_norm(hidden), reverse=True)[:, 0, :]
        greedy, temperature, top_k, top_p, seeds = sampling

        def draw():
            kept = filter_logits(logits, temperature, top_k, top_p)
            tokens = []
            for row in range(logits.shape[0]):  # static: the batch width
                seed_state = ops.cast(ops.stack([seeds[row], ops.cast(position, "int32")]), self._seeds.state.dtype)
                with self._scope([], seed_state):
                    tokens.append(keras.random.categorical(kept[row:row + 1], 1, seed=self._seeds, dtype="int32")[:, 0])
            return ops.cast(ops.concatenate(tokens, axis=0), "int32")

        return ops.cond(greedy, lambda: ops.cast(ops.argmax(logits, axis=-1), "int32"), draw)

    def _prefill(self, values, prompt_ids, length, sampling, cache_length):
        from keras import ops

        self.compiles += 1
        b = self.model.backbone
        rows = prompt_ids.shape[0]
        shape = (rows, 2, cache_length, b.num_heads, b.hidden_dim // b.num_heads)
        caches = [ops.zeros(shape, self.model.compute_dtype) for _ in b.transformer_layers]
        with self._scope(values):
            hidden, caches = self._forward(prompt_ids, caches, 0)
        last = ops.take(hidden, ops.reshape(length - 1, (1,)), axis=1)  # a gather: see Generator._prefill
        first = self._next_token(values, last, length, sampling)
        token_ids = ops.slice_update(ops.zeros((rows, cache_length), "int32"), [0, 0], prompt_ids)
        token_ids = ops.slice_update(token_ids, [0, length], ops.reshape(first, (rows, 1)))
        return token_ids, caches

    def _decode(self, values, token_ids, caches, index, stop, sampling, eos_id):
        from keras import ops

        self.compiles += 1
        rows = token_ids.shape[0]

        def more(token_ids, caches, index):
            newest = ops.slice(token_ids, [0, index], [rows, 1])
            return ops.logical_and(index + 1 < stop, ops.any(ops.not_equal(newest, eos_id)))

        def step(token_ids, caches, index):
            with self._scope(values):
                hidden, caches = self._forward(ops.slice(token_ids, [0, index], [rows, 1]), caches, index)
            token = self._next_token(values, hidden, index + 1, sampling)
            token_ids = ops.slice_update(token_ids, [0, index + 1], ops.reshape(token, (rows, 1)))
            return token_ids, caches, index + 1

        return ops.while_loop(more, step, (token_ids, caches, ops.cast(index, "int32")))

    def start(self, values, rows: list[list[int]], total: int, s: Settings, seeds: list[int]):
        """Prefill equal-length `rows`; returns (state, index of the first new token)."""
        length = len(rows[0])
        assert all(len(r) == length for r in rows), "a batch shares its prompt length"
        width = bucket(len(rows), 1, 1 << 30)  # pad the batch to a power of two: few programs
        cache_length = bucket(total, MIN_CACHE_BUCKET, self.max_sequence_length)
        prompt = np.zeros((width, bucket(length, MIN_PROMPT_BUCKET, cache_length)), "int32")
        prompt[:, :length] = rows[0]
        prompt[:len(rows), :length] = rows
        greedy, temperature, top_k, top_p, _ = self._sampling(s, int(self.model.backbone.vocabulary_size))
        row_seeds = np.array([seeds[min(i, len(seeds) - 1)] & 0x7FFFFFFF for i in range(width)], "int32")
        sampling = (greedy, temperature, top_k, top_p, row_seeds)
        token_ids, caches = self._prefill_fn(values, prompt, np.int32(length), sampling, cache_length)
        return [token_ids, caches, sampling, values], length

    def advance(self, state, index: int) -> np.ndarray:
        """Decode one more token; returns the batch's tokens at `index + 1`."""
        from keras import ops

        token_ids, caches, sampling, values = state
        state[0], state[1], _ = self._decode_fn(values, token_ids, caches, np.int32(index), np.int32(index + 2),
                                                sampling, np.int32(-1))  # -1: no row stops the others
        return ops.convert_to_numpy(state[0])[:, index + 1]

    def tokens_at(self, state, index: int) -> np.ndarray:
        from keras import ops

        return ops.convert_to_numpy(state[0])[:, index]
