"""The demo's one seam to generation: requests in, streamed answers out, batched across users.

`Answerer.answer_many(jobs)` queues each job (the weights of one checkpoint,
prompt ids, settings) and yields `(job index, kind, payload)` events as the
answers grow: `("text", piece)`, then `("done", {"tokens", "seconds"})` or
`("error", message)`. One worker thread owns decoding. Jobs that arrive
within `window_s` of each other and share weights, sampler settings and
prompt length decode as one batch (up to `max_batch` rows, each with its own
seed); every running batch advances one token per turn, so two models' answers
(or two users') stream side by side instead of queueing. `batching=False`
serves one job at a time, start to end: the baseline the benchmark and the
concurrency test compare against.

Why by hand: Gradio's own `batch=True` events wait for a whole batch and
return whole answers (no streaming, no per-user seeds), and the continuous-
batching engine for `kgpt2 serve` is being built separately; it can replace
this class behind the same `answer_many`.

    >>> from kgpt2.answerer import Answerer
    >>> answerer = Answerer(window_s=0.02, max_batch=8)
    >>> # for index, kind, payload in answerer.answer_many([Job(weights, ids, total, settings), ...]): ...
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Iterator

from kgpt2.batch_decode import IncrementalText, token_bytes_of
from kgpt2.generate import Settings

log = logging.getLogger("kgpt2")


@dataclass
class Job:
    weights: object  # kgpt2.model_pool.Weights
    ids: list
    total: int  # prompt + new tokens, within the model's context
    settings: Settings


@dataclass(eq=False)
class _Request:
    job: Job
    index: int
    events: queue.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.perf_counter)

    def put(self, kind, payload) -> None:
        self.events.put((self.index, kind, payload))

    def key(self) -> tuple:
        s, j = self.job.settings, self.job
        return (id(j.weights.values), s.sampler, s.temperature, s.top_k, s.top_p, s.num_beams, j.total, len(j.ids))


class _Batch:
    """Rows decoding together; `step()` adds one token to each and reports it."""

    def __init__(self, rows: list[_Request], lock):
        self.rows, job = rows, rows[0].job
        self.decoder = job.weights.decoder
        bytes_of = token_bytes_of(self.decoder.tokenizer)
        self.texts = [IncrementalText(bytes_of) for _ in rows]
        self.counts, self.done = [0] * len(rows), [False] * len(rows)
        self.total, self.t0 = job.total, time.perf_counter()
        if job.settings.sampler == "beam":  # KerasHub's beam search reads the model's own variables
            with lock:
                for var, value in zip(self.decoder.model.variables, job.weights.values):
                    var.assign(value)
                new = self.decoder.generate_ids(job.ids, replace(job.settings, max_new_tokens=job.total - len(job.ids)))
            self.state, self.index = None, len(job.ids)
            for token in new:
                self._emit([token], eos=False)
            self._finish(0)
            return
        self.state, self.index = self.decoder.start(job.weights.values, [r.job.ids for r in rows], job.total,
                                                    job.settings, [r.job.settings.seed for r in rows])
        self._emit(self.decoder.tokens_at(self.state, self.index))

    def _finish(self, i) -> None:
        if not self.done[i]:
            self.done[i] = True
            self.texts[i].finish()
            self.rows[i].put("done", {"tokens": self.counts[i], "seconds": time.perf_counter() - self.t0})

    def _emit(self, tokens, eos=True) -> None:
        for i, row in enumerate(self.rows):
            if self.done[i]:
                continue
            if row.cancelled.is_set() or (eos and int(tokens[i]) == self.decoder.tokenizer.eos_id):
                self._finish(i)
                continue
            self.counts[i] += 1
            piece = self.texts[i].push(int(tokens[i]))
            if piece:
                row.put("text", piece)
        if self.state is not None and self.index + 1 >= self.total:
            for i in range(len(self.rows)):
                self._finish(i)

    def running(self) -> bool:
        return not all(self.done)

    def step(self) -> None:
        self.index += 1
        self._emit(self.decoder.advance(self.state, self.index - 1))


class Answerer:
    def __init__(self, window_s: float = 0.02, max_batch: int = 8, batching: bool = True, lock=None,
                 min_step_s: float = 0.0):
        self.window_s, self.batching = window_s, batching
        self.min_step_s = min_step_s  # a floor on each token turn: lets tests press Stop mid-answer
        self.max_wait_s = 0.5  # the longest a request waits for a fuller batch while others decode
        self.max_batch = max_batch if batching else 1
        self.lock = lock or threading.RLock()  # the model pool's: beams assign a model's variables
        self.batches = 0  # batches started (tests: concurrent users share batches)
        self.rows = 0
        self._inbox: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def answer_many(self, jobs: list[Job], cancel: threading.Event | None = None) -> Iterator[tuple[int, str, object]]:
        """Queue `jobs`; yield their events until each is done or failed. Closing the iterator
        (or setting `cancel`) stops the unfinished ones at their next token."""
        events: queue.Queue = queue.Queue()
        requests = [_Request(job, i, events) for i, job in enumerate(jobs)]
        if cancel is not None:
            for r in requests:
                r.cancelled = cancel
        self._ensure_worker()
        for r in requests:
            self._inbox.put(r)
        open_jobs = set(range(len(requests)))
        try:
            while open_jobs:
                event = events.get()
                if event[1] in ("done", "error"):
                    open_jobs.discard(event[0])
                yield event
        finally:
            for i in open_jobs:  # abandoned: stop decoding them
                requests[i].cancelled.set()

    # --- the worker ---
    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._loop, name="kgpt2-answerer", daemon=True)
                self._worker.start()

    def _collect(self, idle: bool) -> list[_Request]:
        """New requests: when idle, wait for one and gather what arrives within the window;
        while decoding, take what is already waiting (no pause between tokens)."""
        if not self.batching:
            return [self._inbox.get()] if idle else []  # one at a time: nothing new until the job ends
        new = [self._inbox.get()] if idle else []
        deadline = time.perf_counter() + (self.window_s if idle else 0.0)
        while True:
            try:
                new.append(self._inbox.get(timeout=max(0.0, deadline - time.perf_counter())) if idle
                           else self._inbox.get_nowait())
            except queue.Empty:
                break
        return [r for r in new if not r.cancelled.is_set()]

    def _groups(self, requests: list[_Request]) -> list[list[_Request]]:
        groups: dict = {}
        for r in requests:
            if r.job.settings.sampler == "beam":
                groups[("beam", id(r))] = [r]
                continue
            rows = groups.setdefault(r.key(), [[]])
            if len(rows[-1]) == self.max_batch:
                rows.append([])
            rows[-1].append(r)
        return [g for v in groups.values() for g in (v if isinstance(v[0], list) else [v])]

    def _admit(self, pending: list[_Request], busy: bool) -> list[list[_Request]]:
        """Groups to start now. While batches run, a group waits until it is full or its oldest
        request has waited `max_wait_s`: many small batches would cost nearly one step each."""
        groups, now = self._groups(pending), time.perf_counter()
        ready = [g for g in groups if not busy or len(g) >= self.max_batch or now - g[0].arrived >= self.max_wait_s]
        started = {id(r) for g in ready for r in g}
        pending[:] = [r for r in pending if id(r) not in started and not r.cancelled.is_set()]
        return ready

    def _loop(self) -> None:
        active: list[_Batch] = []
        pending: list[_Request] = []
        while True:
            pending += self._collect(idle=not active and not pending)
            for rows in self._admit(pending, busy=bool(active)):
                try:
                    active.append(_Batch(rows, self.lock))
                    self.batches += 1
                    self.rows += len(rows)
                except Exception as e:  # noqa: BLE001 - reported to the waiting users, the worker lives on
                    log.exception("demo: generation failed")
                    for r in rows:
                        r.put("error", _message(e))
            turn = time.perf_counter()
            for batch in list(active):
                try:
                    if batch.running():
                        batch.step()
                except Exception as e:  # noqa: BLE001
                    log.exception("demo: generation failed")
                    for i, r in enumerate(batch.rows):
                        if not batch.done[i]:
                            r.put("error", _message(e))
                    batch.done = [True] * len(batch.rows)
                if not batch.running():
                    active.remove(batch)
            if active and self.min_step_s:
                time.sleep(max(0.0, self.min_step_s - (time.perf_counter() - turn)))


def _message(e: Exception) -> str:
    from kgpt2.errors import UserError

    return str(e) if isinstance(e, UserError) else f"generation failed ({type(e).__name__}: {e})"
