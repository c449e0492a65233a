"""The generation engine: many requests decoded together in the fixed slots of one KV cache.

Continuous (in-flight) batching: each request takes a free slot (one row of
the cache); the requests admitted in one step are prefilled together in one
launch, then decode beside whatever else is running; between launches
finished or cancelled requests leave and waiting ones join. The compiled
programs (kgpt2.generation.decoding; `Engine.compiles` counts their traces) are a
`prefill` per (admitted rows, prompt length) bucket, powers of two, and two
`decode` loops (all rows greedy, or some sampling) of up to
`steps_per_launch` one-token steps on the device in fixed-length chunks,
stopping after the chunk in which a row ended. Sampling settings, seeds and
limits are per-row tensors (kgpt2.generation.sampling), so new settings never compile.

How rows at different lengths share one cache: all rows write their next
key/value at one shared column `t` that advances by one per step (a ring of
`cache_length` columns). A row's prompt is placed in the columns just before
`t`, so its tokens occupy a contiguous arc of the ring; its attention mask
is that arc, and its position ids are its own. GPT-2's positions are added
at the input, so attention does not care where in the ring a column lies.

    >>> from kgpt2.generation.engine import Engine
    >>> # engine = Engine(model, tokenizer, slots=8)
    >>> # request = engine.submit(tokenizer.encode("The with statement"), Sampling(), total=40)
    >>> # while not request.finished: engine.step()
    >>> # request.text
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable

import numpy as np

from kgpt2.errors import UserError
from kgpt2.generation.decoding import MIN_PROMPT_BUCKET, Programs, bucket, on_accelerator, pack
from kgpt2.generation.engine_request import Request, Sampling
from kgpt2.generation.sampling import row_seed

__all__ = ["Engine", "Request", "Sampling"]  # a request's parts live in kgpt2.generation.engine_request

# Positions (rows x prompt width) one scored prefill may take: its logits are float32
# [rows, width, vocabulary] (GPT-2: 4096 positions = 0.8 GB).
SCORED_POSITIONS = 4096


# Decode steps a launch while every slot is taken, on an accelerator (Engine's default).
FULL_LAUNCH_STEPS = 64


class Engine:
    """Batched generation on one loaded model; `step()` runs one round of admissions and decoding.

    Not thread-safe by itself except `submit` and `Request.cancel`; one
    thread calls `step` (see `start` for a background loop).
    """

    def __init__(self, model, tokenizer, slots: int = 8, cache_length: int | None = None, steps_per_launch: int = 16,
                 weights: Callable[[], list] | None = None, chunk: int | None = None, programs: Programs | None = None,
                 full_steps_per_launch: int | None = None):
        """`weights`, when given, returns one array per `model.variables` at each launch, used instead
        of the variables: engines of several checkpoints share one built model without swapping.
        `chunk`: decode steps per fixed-length inner loop on the device (default 1:
        kgpt2.generation.decoding.default_chunk). `full_steps_per_launch`: the launch length while
        every slot is taken: no request can join before a row ends, and a row's end stops the launch
        anyway, so longer launches cost no one a wait (tokens reach a stream's listener at the end of
        each launch, though). Default: `FULL_LAUNCH_STEPS` on an accelerator (H200, 64 streams: 75,293
        tokens/s against 67,793 at 16 steps, session 9; docs/benchmarks.md), `steps_per_launch` on a
        CPU, where a launch costs little and 64 steps would hold a stream's tokens back for seconds."""
        b = model.backbone
        self.model, self.tokenizer, self.slots = model, tokenizer, slots
        self.max_sequence_length = int(b.max_sequence_length)
        self.cache_length = min(cache_length or self.max_sequence_length, self.max_sequence_length)
        self.vocabulary = int(b.vocabulary_size)
        if full_steps_per_launch is None:
            full_steps_per_launch = FULL_LAUNCH_STEPS if on_accelerator() else steps_per_launch
        full = max(full_steps_per_launch, steps_per_launch)
        self.programs = programs or Programs(model, slots, self.cache_length, full, chunk)
        # Whole chunks, at most the programs' token buffer.
        chunk, width = self.programs.chunk, self.programs.steps_per_launch
        self.full_steps_per_launch = min(-(-full // chunk) * chunk, width)
        self.steps_per_launch = min(-(-steps_per_launch // chunk) * chunk, self.full_steps_per_launch)
        self.waiting: deque[Request] = deque()
        self.rows: list[Request | None] = [None] * slots
        self._lock, self._wake = threading.Lock(), threading.Condition()
        self._thread, self._closing = None, False
        n = slots
        self._last, self._pos, self._start, self._limit, self._top_k, self._seed = (
            np.zeros(n, "int32") for _ in range(6))
        self._greedy, self._temperature, self._top_p = np.ones(n, bool), np.ones(n, "float32"), np.ones(n, "float32")
        self._t = 0
        self._caches = None
        self._weights = weights

    @property
    def compiles(self) -> int:
        """Programs traced so far (shared with `sibling` engines)."""
        return self.programs.compiles

    def sibling(self, weights: Callable[[], list]) -> "Engine":
        """An engine on the same model and shapes with its own slots and `weights`, reusing this
        engine's compiled programs (they read the model only through the values passed in)."""
        return Engine(self.model, self.tokenizer, self.slots, self.cache_length, self.steps_per_launch, weights,
                      programs=self.programs, full_steps_per_launch=self.full_steps_per_launch)

    def _values(self) -> list:
        return self._weights() if self._weights is not None else [v.value for v in self.programs.variables]

    # Requests -----------------------------------------------------------------------
    def submit(self, ids: list[int], sampling: Sampling, total: int, stop=(), listener=None,
               logprobs: int | None = None, echo: bool = False) -> Request:
        """Queue a request; `total` (prompt + new tokens) must fit the cache (see `Request` for
        `logprobs` and `echo`; `total == len(ids)` with `echo` generates nothing)."""
        if not ids:
            raise UserError("the prompt is empty")
        if total > self.cache_length or len(ids) > total or (len(ids) == total and not echo):
            raise UserError(f"the prompt is {len(ids)} tokens; with the new tokens it must fit in "
                            f"{self.cache_length} and leave room to generate")
        request = Request(list(ids), sampling, int(total), tuple(s for s in stop if s), listener, logprobs, echo)
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
        """Admit waiting requests into free slots (one prefill launch), then decode up to `steps`
        tokens (one launch; default `steps_per_launch`, `full_steps_per_launch` when no slot is free); False if idle."""
        self._drop_cancelled()
        self._admit()
        active = np.array([r is not None for r in self.rows])
        if not active.any() or steps == 0:  # steps=0: admissions (prefills) only
            return bool(self.waiting) or bool(active.any())
        cap = self.full_steps_per_launch if active.all() else self.steps_per_launch
        steps = min(steps or cap, self.full_steps_per_launch)
        ints, floats = pack(self._last, self._pos, self._start, self._limit, active, self._greedy, self._top_k,
                            self._seed, self._temperature, self._top_p)
        logprobs = any(r is not None and r.logprobs is not None for r in self.rows)  # else no scores computed
        decode = self.programs.decode(bool(self._greedy[active].all()), logprobs)
        scalars = np.array([self._t, steps, self.tokenizer.eos_id], "int32")
        self._caches, out, *scores = decode(self._values(), self._caches, ints, floats, scalars)
        out, scores = np.asarray(out), [np.asarray(a) for a in scores]
        n = int(out[0, -1])
        self._t = (self._t + n) % self.cache_length
        self._pos[active] += n
        self._last[active] = out[active, n - 1]
        for slot in np.flatnonzero(active):
            self._receive(slot, out[slot, :n], [a[slot, :n] for a in scores])
        return True

    def warm_up(self, logprobs: bool = False) -> None:
        """Compile, on an idle engine, what serving launches: both decode loops (and their `logprobs`
        variants when asked) and the prefill for every bucket of admitted rows (shortest prompt
        bucket), so no client waits for a compile later. Scored prefills (echo) compile when used."""
        if self.busy:
            raise RuntimeError("warm_up runs on an idle engine")
        if self._caches is None:
            self._caches = self.programs.empty_caches(self.slots, self.cache_length)
        values, idle = self._values(), np.zeros(self.slots, "int32")  # no active row: the caches stay free
        scalars = np.array([self._t, 1, self.tokenizer.eos_id], "int32")
        for greedy_only, scored in [(g, s) for g in (True, False) for s in (False, True) if logprobs or not s]:
            ints, floats = pack(idle, idle, idle, idle, idle, idle + greedy_only, idle + 1, idle, idle + 1.0,
                                idle + 1.0)
            self._caches, *_ = self.programs.decode(greedy_only, scored)(values, self._caches, ints, floats, scalars)
        rows = 1
        while True:
            ints = np.array([[1, slot, 0, 1, 1, 0] for slot in range(rows)], "int32")  # free slots: overwritten later
            prompts = np.zeros((rows, min(MIN_PROMPT_BUCKET, self.cache_length)), "int32")
            floats = np.ones((rows, 2), "float32")
            self._caches, first, _ = self.programs.prefill(values, self._caches, prompts, ints, floats)
            if rows >= self.slots:
                break
            rows = min(2 * rows, self.slots)
        np.asarray(first)

    def _drop_cancelled(self) -> None:
        with self._lock:
            for request in [r for r in self.waiting if r.cancelled]:
                self.waiting.remove(request)
                request._finish("cancelled")
        for slot, request in enumerate(self.rows):
            if request is not None and request.cancelled:
                self.rows[slot] = None
                request._finish("cancelled")

    def _take_admissions(self, free: int) -> list[Request]:
        """Waiting requests for one prefill, first come first served: a run of unscored ones, or of
        scored ones (see `Request.scored`) up to `SCORED_POSITIONS` prompt positions (at least one)."""
        admitted = []
        with self._lock:
            while self.waiting and len(admitted) < free:
                head = self.waiting[0]
                if admitted and head.scored != admitted[0].scored:
                    break
                if admitted and head.scored:  # the scored prefill's [rows, width] logits stay within the bound
                    width = bucket(max(len(r.ids) for r in admitted + [head]), MIN_PROMPT_BUCKET, self.cache_length)
                    if bucket(len(admitted) + 1, 1, self.slots) * width > SCORED_POSITIONS:
                        break
                admitted.append(self.waiting.popleft())
        return admitted

    def _admit(self) -> None:
        """Prefill waiting requests into free slots, all in one launch, each placed to end at the shared column."""
        free = [slot for slot in range(self.slots) if self.rows[slot] is None]
        admitted = self._take_admissions(len(free))
        if not admitted:
            return
        if self._caches is None:
            self._caches = self.programs.empty_caches(self.slots, self.cache_length)
        rows = bucket(len(admitted), 1, self.slots)  # padding rows repeat the first request
        width = bucket(max(len(r.ids) for r in admitted), MIN_PROMPT_BUCKET, self.cache_length)
        prompts, ints = np.zeros((rows, width), "int32"), np.zeros((rows, 6), "int32")
        floats = np.ones((rows, 2), "float32")
        for i, (request, slot) in enumerate(zip(admitted, free)):
            n, s = len(request.ids), request.sampling
            start = (self._t - n) % self.cache_length
            prompts[i, :n] = request.ids
            ints[i] = (n, slot, start, s.greedy, min(s.top_k, self.vocabulary), row_seed(s.seed))
            floats[i] = (s.temperature, s.top_p)
            self._greedy[slot], self._temperature[slot], self._top_p[slot] = s.greedy, s.temperature, s.top_p
            self._top_k[slot], self._seed[slot] = ints[i, 4], ints[i, 5]
            self._pos[slot], self._start[slot], self._limit[slot] = n, start, request.total - 1
            self.rows[slot] = request
        prompts[len(admitted):], ints[len(admitted):], floats[len(admitted):] = prompts[0], ints[0], floats[0]
        self._caches, first, scores, *prompt_scores = self.programs.prefill(
            self._values(), self._caches, prompts, ints, floats, scored=admitted[0].scored)
        first, scores = np.asarray(first), [np.asarray(a) for a in scores]
        prompt_scores = [np.asarray(a) for a in prompt_scores[0]] if prompt_scores else []
        for i, (request, slot) in enumerate(zip(admitted, free)):
            if prompt_scores:  # position p scores prompt token p + 1
                request.prompt_scores = [request._score(*(a[i, p] for a in prompt_scores))
                                         for p in range(len(request.ids) - 1)]
            if len(request.ids) >= request.total:  # echo with max_tokens 0: scored, nothing to generate
                self.rows[slot] = None
                request._finish("length")
                continue
            self._last[slot] = first[i]
            self._receive(slot, [first[i]], [a[i:i + 1] for a in scores])

    def _receive(self, slot: int, tokens, scores=()) -> None:
        """Hand new tokens (and their scores, when the request wants them) to the slot's request;
        free the slot when it ends."""
        request = self.rows[slot]
        reason = None
        for j, token in enumerate(int(t) for t in tokens):
            if request.logprobs is not None:
                request.scores.append(request._score(*(a[j] for a in scores)))
            if token == self.tokenizer.eos_id:
                reason, request.ended_on_eos = "stop", True
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
