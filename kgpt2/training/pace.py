"""When a progress line is due, and how long is left, in words: the pacing `kgpt2 train`'s and `kgpt2 evaluate`'s
lines (kgpt2.training.progress_lines) and `kgpt2 prepare`'s (kgpt2.data.shard_writer) share. No Keras here, so a
prepare imports none before it has checked its source and --out.
"""

from __future__ import annotations

import threading
import time

EVERY_S = 60.0  # a line a minute while the output is a log


class Pace:
    """When a progress line is due, and the rate so far. The first batch (compilation) is never a line and starts
    the rate's clock; a batch reported after a later one (async-safe callbacks run on several threads) is none
    either. `wanted(done, seconds since the last line)` decides the rest, under the lock."""

    def __init__(self, clock=time.monotonic):
        self.clock, self._lock = clock, threading.Lock()
        self._last, self._first, self._done, self._said = clock(), None, 0, -1

    def due(self, done: int, wanted) -> float | None:
        """Batches per second since the first batch's end when a line is due after batch `done`; else None."""
        now = self.clock()
        with self._lock:
            if self._first is None:
                self._first = (done, now)
            if done <= max(self._done, self._first[0]):
                return None
            self._done = done
            if not wanted(done, now - self._last):
                return None
            self._last, self._said = now, done
        first_done, first_time = self._first
        return (done - first_done) / max(now - first_time, 1e-9)

    def unsaid(self) -> tuple[int, float | None] | None:
        """The most batches done and their rate (None after a single batch), unless they were a line already."""
        now = self.clock()
        with self._lock:
            if self._first is None or self._done == self._said:
                return None
            done, (first_done, first_time) = max(self._done, self._first[0]), self._first
        return done, ((done - first_done) / max(now - first_time, 1e-9) if done > first_done else None)


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
