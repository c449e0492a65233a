"""The demo's one seam to generation: requests in, streamed answers out, batched across users.

`Answerer.answer_many(jobs)` queues each job (the weights of one checkpoint,
prompt ids, settings) and yields `(job index, kind, payload)` events as the
answers grow: `("text", piece)`, then `("done", {"tokens", "seconds"})` or
`("error", message)`. One worker thread drives the checkpoints' engines
(kgpt2.generation.engine, one per checkpoint in kgpt2.serving.model_pool): a job joins its
checkpoint's engine between launches (continuous batching: no waiting for a
batch to fill), each with its own settings and seed, and every engine with
work advances each turn, so two models' answers (or two users') stream side
by side instead of queueing. Closing the stream or setting `cancel` cancels
the request, which frees its slot at the next launch. Beam search runs one
request at a time (kgpt2.generate.Generator) under the pool's lock.
`batching=False` serves one job at a time, start to end: the baseline the
benchmark and the concurrency test compare against.

Why by hand: Gradio's own `batch=True` events wait for a whole batch and
return whole answers (no streaming, no per-user seeds).

    >>> from kgpt2.serving.answerer import Answerer
    >>> answerer = Answerer()
    >>> # for index, kind, payload in answerer.answer_many([Job(weights, ids, total, settings), ...]): ...
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Iterator

from kgpt2.errors import UserError
from kgpt2.generate import Settings

log = logging.getLogger("kgpt2")

STEPS_PER_TURN = 4  # tokens per engine launch: few launches, and text still arrives a few tokens at a time


@dataclass
class Job:
    weights: object  # kgpt2.serving.model_pool.Weights
    ids: list
    total: int  # prompt + new tokens, within the model's context
    settings: Settings


@dataclass(eq=False)
class _Request:
    job: Job
    index: int
    events: queue.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: float = 0.0
    request: object = None  # the engine's kgpt2.generation.engine_request.Request once submitted

    def put(self, kind, payload) -> None:
        self.events.put((self.index, kind, payload))

    def done(self, tokens: int) -> None:
        self.put("done", {"tokens": tokens, "seconds": time.perf_counter() - self.started})


class Answerer:
    def __init__(self, batching: bool = True, lock=None, min_step_s: float = 0.0, steps_per_turn: int = STEPS_PER_TURN):
        self.batching = batching
        self.min_step_s = min_step_s  # a floor on each one-token turn: lets tests press Stop mid-answer
        self.steps_per_turn = steps_per_turn
        self.lock = lock or threading.RLock()  # the model pool's: beams assign a model's variables
        self.launches = 0  # engine launches (tests: batching needs fewer)
        self.most_together = 0  # the most requests one engine decoded in one launch
        self._inbox: queue.Queue = queue.Queue()  # lists of requests, one per answer_many call
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def answer_many(self, jobs: list[Job], cancel: threading.Event | None = None) -> Iterator[tuple[int, str, object]]:
        """Queue `jobs`; yield their events until each is done or failed. Closing the iterator
        (or setting `cancel`) stops the unfinished ones at their engine's next launch."""
        events: queue.Queue = queue.Queue()
        requests = [_Request(job, i, events) for i, job in enumerate(jobs)]
        if cancel is not None:
            for r in requests:
                r.cancelled = cancel
        self._ensure_worker()
        if self.batching:
            self._inbox.put(requests)  # together: they join their engines in the same turn
        else:
            for r in requests:
                self._inbox.put([r])
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
        """New requests: when idle, wait for some; while decoding, take what is already waiting
        (one at a time: nothing new until the running job ends)."""
        if not self.batching:
            return self._inbox.get() if idle else []
        new = self._inbox.get() if idle else []
        while True:
            try:
                new = new + self._inbox.get_nowait()
            except queue.Empty:
                break
        return new

    def _loop(self) -> None:
        running: list[_Request] = []
        while True:
            for r in self._collect(idle=not running):
                self._start(r, running)
            turn = time.perf_counter()
            for r in running:
                if r.cancelled.is_set():
                    r.request.cancel()  # its slot is freed at the engine's next launch
            for engine in {id(r.job.weights.engine): r.job.weights.engine for r in running}.values():
                self._launch(engine, running)
            for r in list(running):
                if self._report(r):
                    running.remove(r)
            if running and self.min_step_s:
                time.sleep(max(0.0, self.min_step_s - (time.perf_counter() - turn)))

    def _start(self, r: _Request, running: list[_Request]) -> None:
        """Submit `r` to its checkpoint's engine (beams: answer it now, alone)."""
        r.started = time.perf_counter()
        job, engine = r.job, r.job.weights.engine
        try:
            if r.cancelled.is_set():
                r.done(0)
            elif job.settings.sampler == "beam":
                self._beam(r)
            else:
                r.request = engine.submit(job.ids, job.settings.sampling(), job.total)
                running.append(r)
        except Exception as e:  # noqa: BLE001 - reported to the waiting user, the worker lives on
            log.exception("demo: generation failed")
            r.put("error", _message(e))

    def _beam(self, r: _Request) -> None:
        """KerasHub's beam search reads the model's own variables: load this checkpoint's values."""
        job = r.job
        generator = job.weights.generator
        with self.lock:
            for var, value in zip(generator.model.variables, job.weights.values):
                var.assign(value)
            new = generator.generate_ids(job.ids, replace(job.settings, max_new_tokens=job.total - len(job.ids)))
        text = generator.tokenizer.decode(new)
        if text:
            r.put("text", text)
        r.done(len(new))

    def _launch(self, engine, running: list[_Request]) -> None:
        """One launch of `engine`: admissions, then up to `steps_per_turn` tokens for every slot."""
        rows = sum(r is not None for r in engine.rows) + len(engine.waiting)
        self.most_together = max(self.most_together, min(rows, engine.slots))
        try:
            engine.step(1 if self.min_step_s else self.steps_per_turn)
            self.launches += 1
        except Exception as e:  # noqa: BLE001 - a failed launch fails its requests, not the demo
            log.exception("demo: generation failed")
            engine.fail_all(_message(e))

    @staticmethod
    def _report(r: _Request) -> bool:
        """Send `r`'s new text (and its end); True when it has ended."""
        request = r.request
        finished = request.finished  # read before the text: a finished request's text is final
        piece = request.take_text()
        if piece:
            r.put("text", piece)
        if finished and request.finish_reason == "error":
            r.put("error", request.error)
        elif finished:
            r.done(len(request.tokens))
        return finished


def _message(e: Exception) -> str:
    return str(e) if isinstance(e, UserError) else f"generation failed ({type(e).__name__}: {e})"
