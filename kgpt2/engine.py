"""The generation engine: many requests decoded together in the fixed slots of one KV cache.

Continuous (in-flight) batching: each request takes a free slot (one row of
the cache), is prefilled on its own, then decodes beside whatever else is
running; between launches finished or cancelled requests leave and waiting
ones join. Two compiled programs serve every request (`Engine.compiles`
counts their traces): `prefill` (per prompt-length bucket, a power of two)
and `decode`, a loop of up to `steps_per_launch` one-token steps on the
device that stops early when a row ends. Sampling settings, seeds and
limits are per-row tensors (kgpt2.sampling), so new settings never compile.

How rows at different lengths share one cache: all rows write their next
key/value at one shared column `t` that advances by one per step (a ring of
`cache_length` columns). A row's prompt is placed in the columns just before
`t`, so its tokens occupy a contiguous arc of the ring; its attention mask
is that arc, and its position ids are its own. GPT-2's positions are added
at the input, so attention does not care where in the ring a column lies.

    >>> from kgpt2.engine import Engine
    >>> # engine = Engine(model, tokenizer, slots=8)
    >>> # request = engine.submit(tokenizer.encode("The with statement"), Sampling(), total=40)
    >>> # while not request.finished: engine.step()
    >>> # request.text
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kgpt2.errors import UserError
from kgpt2.sampling import sample

MIN_PROMPT_BUCKET = 32  # prompts are padded to a power of two of at least this


def bucket(n: int, smallest: int, cap: int) -> int:
    """The power of two >= max(n, smallest), capped at `cap`: few shapes, few compiles."""
    size = smallest
    while size < n:
        size *= 2
    return min(size, cap)


def _compiled(fn, static=(), donate=()):
    """`fn` compiled for the backend: jax.jit, tf.function (XLA), or eager on torch."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn, static_argnums=static, donate_argnums=donate)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    return fn


@dataclass
class Sampling:
    """One request's sampling, as the engine runs it (greedy ignores the rest)."""

    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 1 << 30  # >= vocabulary: no cut
    top_p: float = 1.0
    seed: int = 0


@dataclass(eq=False)
class Request:
    """One generation: filled in by the engine; read `tokens`, `text`, `finish_reason`."""

    ids: list[int]
    sampling: Sampling
    total: int  # prompt + new tokens, at most
    stop: tuple = ()  # stop strings: the text ends before the first one
    listener: Callable[[], None] | None = None  # called (from the engine's thread) after each update
    tokens: list = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "stop", "length", "cancelled" or "error"
    error: str = ""
    cancelled: bool = False
    _sent: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the engine's next step."""
        self.cancelled = True

    def take_text(self) -> str:
        """The text produced since the last call that can no longer change."""
        finished, text = self.finished, self.text  # one snapshot: the engine's thread may update both
        ready = len(text) if finished else self._stable_length(text)
        piece, self._sent = text[self._sent:ready], max(self._sent, ready)
        return piece

    def _stable_length(self, text: str) -> int:
        """Hold back a partial UTF-8 character and any tail that may begin a stop string."""
        end = len(text) - (1 if text.endswith("\ufffd") else 0)
        for s in self.stop:
            for k in range(min(len(s) - 1, end), 0, -1):
                if text[:end].endswith(s[:k]):
                    end -= k
                    break
        return max(end, self._sent)

    def _finish(self, reason: str) -> None:
        self.finish_reason = reason
        self._notify()

    def _notify(self) -> None:
        try:
            if self.listener:
                self.listener()
        except Exception:  # e.g. the listener's event loop has closed: that must not stop the engine
            pass


class Engine:
    """Batched generation on one loaded model; `step()` runs one round of admissions and decoding.

    Not thread-safe by itself except `submit` and `Request.cancel`; one
    thread calls `step` (see `start` for a background loop).
    """

    def __init__(self, model, tokenizer, slots: int = 8, cache_length: int | None = None, steps_per_launch: int = 16,
                 weights: Callable[[], list] | None = None):
        """`weights`, when given, returns one array per `model.variables` at each launch, used instead
        of the variables: engines of several checkpoints share one built model without swapping."""
        b = model.backbone
        self.model, self.tokenizer, self.slots = model, tokenizer, slots
        self.max_sequence_length = int(b.max_sequence_length)
        self.cache_length = min(cache_length or self.max_sequence_length, self.max_sequence_length)
        self.steps_per_launch = steps_per_launch
        self.vocabulary = int(b.vocabulary_size)
        self.compiles = 0  # programs traced so far
        self.waiting: deque[Request] = deque()
        self.rows: list[Request | None] = [None] * slots
        self._lock, self._wake = threading.Lock(), threading.Condition()
        self._thread, self._closing = None, False
        n = slots
        self._last, self._pos, self._start, self._limit = (np.zeros(n, "int32") for _ in range(4))
        self._settings = [np.ones(n, bool), np.ones(n, "float32"), np.ones(n, "int32"), np.ones(n, "float32"),
                          np.zeros(n, "int32")]
        self._t = 0
        self._caches = None
        self._weights = weights
        self._prefill_fn = _compiled(self._prefill, donate=(1,))
        self._decode_fn = _compiled(self._decode, donate=(1,))

    def sibling(self, weights: Callable[[], list]) -> "Engine":
        """An engine on the same model and shapes with its own slots and `weights`, reusing this
        engine's compiled programs (they read the model only through the values passed in)."""
        other = Engine(self.model, self.tokenizer, self.slots, self.cache_length, self.steps_per_launch, weights)
        other._prefill_fn, other._decode_fn = self._prefill_fn, self._decode_fn
        return other

    def _values(self) -> list:
        return self._weights() if self._weights is not None else [v.value for v in self.model.variables]

    # Requests -----------------------------------------------------------------------
    def submit(self, ids: list[int], sampling: Sampling, total: int, stop=(), listener=None) -> Request:
        """Queue a request; `total` (prompt + new tokens) must fit the cache."""
        if not ids:
            raise UserError("the prompt is empty")
        if total > self.cache_length or len(ids) >= total:
            raise UserError(f"the prompt is {len(ids)} tokens; with the new tokens it must fit in "
                            f"{self.cache_length} and leave room to generate")
        request = Request(list(ids), sampling, int(total), tuple(s for s in stop if s), listener)
        with self._lock:
            self.waiting.append(request)
        with self._wake:
            self._wake.notify()
        return request

    @property
    def cache_bytes(self) -> int:
        """Bytes of the key/value cache (allocated at the first request, kept while the engine lives)."""
        itemsize = 2 if self.model.compute_dtype in ("bfloat16", "float16") else 4  # the caches' dtype
        return 0 if self._caches is None else sum(int(np.prod(c.shape)) * itemsize for c in self._caches)

    @property
    def busy(self) -> int:
        """Requests waiting or running."""
        return len(self.waiting) + sum(r is not None for r in self.rows)

    # The loop -------------------------------------------------------------------------
    def step(self, steps: int | None = None) -> bool:
        """Admit waiting requests into free slots, then decode up to `steps` tokens; False if idle."""
        self._drop_cancelled()
        for slot in range(self.slots):
            if self.rows[slot] is None:
                with self._lock:
                    request = self.waiting.popleft() if self.waiting else None
                if request is not None:
                    self._admit(slot, request)
        active = np.array([r is not None for r in self.rows])
        if not active.any() or steps == 0:  # steps=0: admissions (prefills) only
            return bool(self.waiting) or bool(active.any())
        steps = min(steps or self.steps_per_launch, self.steps_per_launch)
        values = self._values()
        self._caches, out, n = self._decode_fn(
            values, self._caches, self._last, self._pos, self._start, active, self._limit, tuple(self._settings),
            np.int32(self._t), np.int32(steps), np.int32(self.tokenizer.eos_id))
        out, n = np.asarray(out), int(n)
        self._t = (self._t + n) % self.cache_length
        self._pos[active] += n
        self._last[active] = out[active, n - 1]
        for slot in np.flatnonzero(active):
            self._receive(slot, out[slot, :n])
        return True

    def _drop_cancelled(self) -> None:
        with self._lock:
            for request in [r for r in self.waiting if r.cancelled]:
                self.waiting.remove(request)
                request._finish("cancelled")
        for slot, request in enumerate(self.rows):
            if request is not None and request.cancelled:
                self.rows[slot] = None
                request._finish("cancelled")

    def _admit(self, slot: int, request: Request) -> None:
        """Prefill the request's prompt into `slot`, placed to end at the shared column."""
        n, s = len(request.ids), request.sampling
        if self._caches is None:
            self._caches = self._empty_caches(self.slots)
        prompt = np.zeros((1, bucket(n, MIN_PROMPT_BUCKET, self.cache_length)), "int32")
        prompt[0, :n] = request.ids
        start = (self._t - n) % self.cache_length
        row = [np.array([s.greedy]), np.array([s.temperature], "float32"),
               np.array([min(s.top_k, self.vocabulary)], "int32"), np.array([s.top_p], "float32"),
               np.array([s.seed & 0x7FFFFFFF], "int32")]
        for column, value in zip(self._settings, row):
            column[slot] = value[0]
        values = self._values()
        self._caches, first = self._prefill_fn(values, self._caches, prompt, np.int32(n), np.int32(slot),
                                               np.int32(start), tuple(row))
        first = int(np.asarray(first)[0])
        self.rows[slot] = request
        self._last[slot], self._pos[slot], self._start[slot], self._limit[slot] = first, n, start, request.total - 1
        self._receive(slot, [first])

    def _receive(self, slot: int, tokens) -> None:
        """Hand new tokens to the slot's request; free the slot when it ends."""
        request = self.rows[slot]
        reason = None
        for token in (int(t) for t in tokens):
            if token == self.tokenizer.eos_id:
                reason = "stop"
                break
            request.tokens.append(token)
            if len(request.ids) + len(request.tokens) >= request.total:
                reason = "length"
                break
        text = self.tokenizer.decode(request.tokens)
        cut = min((i for i in (text.find(s) for s in request.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        request.text = text  # one assignment, before finish_reason: readers on other threads see final text
        if reason:
            self.rows[slot] = None
            request._finish(reason)
        else:
            request._notify()

    def _empty_caches(self, batch: int) -> list:
        from keras import ops

        b = self.model.backbone
        shape = (batch, 2, self.cache_length, b.num_heads, b.hidden_dim // b.num_heads)
        return [ops.zeros(shape, self.model.compute_dtype) for _ in b.transformer_layers]

    # Background thread ------------------------------------------------------------------
    def start(self) -> "Engine":
        """Run `step` in a daemon thread whenever there is work (for servers)."""
        self._thread = threading.Thread(target=self._loop, name="kgpt2-engine", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._closing:
            try:
                busy = self.step()
            except Exception as e:  # a failed launch fails its requests, not the server
                self.fail_all(f"{type(e).__name__}: {e}")
                busy = False
            if not busy:
                with self._wake:
                    self._wake.wait_for(lambda: self._closing or self.waiting, timeout=1.0)

    def fail_all(self, message: str) -> None:
        """End every request with `message` and start over with empty caches (after a failed launch)."""
        with self._lock:
            failed = list(self.waiting) + [r for r in self.rows if r is not None]
            self.waiting.clear()
        self.rows = [None] * self.slots
        self._caches = None
        for request in failed:
            request.error = message
            request._finish("error")

    def close(self) -> None:
        """Stop the background loop and cancel what is left."""
        self._closing = True
        with self._wake:
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for request in list(self.waiting) + [r for r in self.rows if r is not None]:
            request.cancel()
        self._drop_cancelled()

    # Traced programs ----------------------------------------------------------------------
    def _scope(self, values):
        """Run the model on `values` (JAX traces them as arguments, not constants)."""
        import keras

        return keras.StatelessScope(state_mapping=list(zip(self.model.variables, values)))

    def _logits(self, hidden):
        b = self.model.backbone
        return b.token_embedding(b.layer_norm(hidden), reverse=True)[:, 0, :]

    def _prefill(self, values, caches, prompt, length, slot, start, sampling):
        """Cache a prompt in a fresh row, sample its first new token, place the row at `slot`."""
        from keras import ops

        self.compiles += 1
        b = self.model.backbone
        fresh = self._empty_caches(1)
        with self._scope(values):
            tokens = b.token_embedding(prompt)
            x = b.embeddings_add((tokens, b.position_embedding(tokens)))
            for i, layer in enumerate(b.transformer_layers):
                x, fresh[i] = layer(x, self_attention_cache=fresh[i], self_attention_cache_update_index=0)
            # A gather, not a slice: TensorFlow's XLA bridge treats slice offsets as
            # compile-time constants and would compile once per prompt length.
            logits = self._logits(ops.take(x, ops.reshape(length - 1, (1,)), axis=1))
        first = sample(logits, *sampling, position=ops.reshape(length, (1,)))
        # Rotate the row so position 0 lands at column `start` (a gather, for the same reason).
        columns = ops.mod(ops.arange(self.cache_length, dtype="int32") - start, self.cache_length)
        placed = [ops.slice_update(c, [slot, 0, 0, 0, 0], ops.take(f, columns, axis=2)) for c, f in zip(caches, fresh)]
        return placed, first

    def _decode(self, values, caches, last, pos, start, active, limit, sampling, t, steps, eos_id):
        """Up to `steps` tokens for every row; stops after the step in which an active row ends."""
        from keras import ops

        self.compiles += 1
        b, length, chunk = self.model.backbone, self.cache_length, self.steps_per_launch
        offsets = ops.mod(ops.arange(length, dtype="int32")[None, :] - start[:, None], length)
        slots_of_chunk = ops.arange(chunk, dtype="int32")[None, :]

        def more(caches, last, pos, t, i, out, ended):
            return ops.logical_and(i < steps, ops.logical_not(ops.any(ended)))

        def one_token(caches, last, pos, t, i, out, ended):
            mask = (offsets <= pos[:, None])[:, None, :]  # the row's own arc of the ring, up to this token
            with self._scope(values):
                tokens = b.token_embedding(last[:, None])
                x = b.embeddings_add((tokens, b.position_embedding(tokens, positions=pos[:, None])))
                new_caches = []
                for layer, cache in zip(b.transformer_layers, caches):
                    x, cache = layer(x, decoder_attention_mask=mask, use_causal_mask=False,
                                     self_attention_cache=cache, self_attention_cache_update_index=t)
                    new_caches.append(cache)
                logits = self._logits(x)
            token = sample(logits, *sampling, position=pos + 1)
            out = ops.where(slots_of_chunk == i, token[:, None], out)
            pos = ops.where(active, pos + 1, pos)
            ended = ops.logical_and(active, ops.logical_or(ops.equal(token, eos_id), pos >= limit))
            return new_caches, token, pos, ops.mod(t + 1, length), i + 1, out, ended

        state = (caches, last, pos, t, ops.zeros((), "int32"), ops.zeros((self.slots, chunk), "int32"),
                 ops.zeros((self.slots,), "bool"))
        caches, _, _, _, i, out, _ = ops.while_loop(more, one_token, state)
        return caches, out, i
