"""A progress line a minute while training (or aligning) writes to a log rather than a terminal.

Keras' `verbose=2` (what `kgpt2 train` uses when its output is not a terminal
or a notebook: `nohup`, `| tee`, a scheduler's log) prints one line when a
`fit` ends, and a stage is one `fit` unless checkpoints or evaluations cut it:
a 10,000-step stage showed nothing for an hour. Keras has no time-based
progress callback, so this one is written here.

    >>> lines = []
    >>> clock = iter([0.0, 1.0, 2.0, 70.0]).__next__
    >>> p = ProgressLines("stage-1", 0, 1000, 2048, say=lines.append, clock=clock)
    >>> p.on_train_begin()
    >>> for batch in range(3):
    ...     p.on_train_batch_end(batch, {"loss": 2.5, "accuracy": 0.25})
    >>> lines
    ['stage-1: step 3 of 1,000 (0.3%), loss 2.5000, accuracy 0.2500, 59 tokens/s, about 9 h 33 min to the end of the plan']
"""

from __future__ import annotations

import logging
import threading
import time

import keras

log = logging.getLogger("kgpt2")

EVERY_S = 60.0


class ProgressLines(keras.callbacks.Callback):
    """Log step, loss, accuracy, tokens/s and the time left every `every_s` seconds of a `fit`."""

    async_safe = True  # as the step log: Keras does not wait on it between steps

    def __init__(self, stage_name: str, first_step: int, total_steps: int, tokens_per_batch: int = 0,
                 metrics=("loss", "accuracy"), every_s: float | None = None, say=log.info, clock=time.monotonic):
        """`tokens_per_batch` 0: the rate in steps/s (preference pairs are no fixed token count)."""
        super().__init__()
        self.stage_name, self.first_step, self.total_steps = stage_name, first_step, total_steps
        self.metrics = metrics
        self.tokens_per_batch, self.say, self.clock = tokens_per_batch, say, clock
        self.every_s = EVERY_S if every_s is None else every_s

    def on_train_begin(self, logs=None):
        self._lock = threading.Lock()  # async_safe: Keras may call on_train_batch_end from several threads
        self._last = self.clock()
        self._first = None  # (batches done, time) at the first step's end: the rate leaves compilation out

    def on_train_batch_end(self, batch, logs=None):
        now, done = self.clock(), batch + 1
        with self._lock:
            if self._first is None:
                self._first = (done, now)
            if now - self._last < self.every_s or done <= self._first[0]:
                return
            self._last = now
            first_done, first_time = self._first
        steps_per_s = (done - first_done) / max(now - first_time, 1e-9)
        step = self.first_step + done
        logs = logs or {}
        values = "".join(f"{m} {float(logs.get(m, float('nan'))):.4f}, " for m in self.metrics)
        rate = (f"{steps_per_s * self.tokens_per_batch:,.0f} tokens/s" if self.tokens_per_batch
                else f"{steps_per_s:.2f} steps/s")
        self.say(f"{self.stage_name}: step {step:,} of {self.total_steps:,} ({step / self.total_steps:.1%}), "
                 f"{values}{rate}, about {duration((self.total_steps - step) / steps_per_s)} to the end of the plan")


def duration(seconds: float) -> str:
    """`3,900` -> '1 h 5 min'; under a minute '< 1 min'.

    >>> duration(3900), duration(59), duration(600)
    ('1 h 5 min', '< 1 min', '10 min')
    """
    minutes = int(seconds // 60)
    if minutes < 1:
        return "< 1 min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"
