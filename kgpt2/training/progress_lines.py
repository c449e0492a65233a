"""Progress lines: a line a minute while training (or aligning) writes to a log rather than a terminal, and a
line per further tenth while `kgpt2 evaluate` scores a model (Keras' evaluate runs at verbose=0 there).

Keras' `verbose=2` (what `kgpt2 train` uses when its output is not a terminal
or a notebook: `nohup`, `| tee`, a scheduler's log) prints one line when a
`fit` ends, and a stage is one `fit` unless checkpoints or evaluations cut it:
a 10,000-step stage showed nothing for an hour. Keras has no time-based
progress callback, so these are written here; `Pace` is the timing both share.
`kgpt2 train` runs its fits at verbose=0 in a log and has a line at each fit's
end instead (`at_end`): one progress source, on stderr, in the plan's steps.

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
import time

import keras

from kgpt2.training.pace import EVERY_S, Pace, duration  # noqa: F401  (duration: evaluate's, from here)

log = logging.getLogger("kgpt2")


SCORING_GAP_S, SCORING_EVERY_S = 2.0, 30.0  # scoring: at most a line per 2 s, at least one per 30 s


class ProgressLines(keras.callbacks.Callback):
    """Log step, loss, accuracy, tokens/s and the time left every `every_s` seconds of a `fit`."""

    async_safe = True  # as the step log: Keras does not wait on it between steps

    def __init__(self, stage_name: str, first_step: int, total_steps: int, tokens_per_batch: int = 0,
                 metrics=("loss", "accuracy"), every_s: float | None = None, say=log.info, clock=time.monotonic,
                 at_end: bool = False):
        """`tokens_per_batch` 0: the rate in steps/s (preference pairs are no fixed token count). `at_end`: a line
        when the fit ends too, for a caller that runs Keras' fit at verbose=0."""
        super().__init__()
        self.at_end = at_end
        self.stage_name, self.first_step, self.total_steps = stage_name, first_step, total_steps
        self.metrics = metrics
        self.tokens_per_batch, self.say, self.clock = tokens_per_batch, say, clock
        self.every_s = EVERY_S if every_s is None else every_s

    def on_train_begin(self, logs=None):
        self._pace = Pace(self.clock)

    def on_train_batch_end(self, batch, logs=None):
        steps_per_s = self._pace.due(batch + 1, lambda done, since: since >= self.every_s)
        if steps_per_s is not None:
            self.say(self._line(self.first_step + batch + 1, logs or {}, steps_per_s))

    def on_train_end(self, logs=None):
        # With `at_end`, the fit's last step is a line too (unless it was one): kgpt2 train turns Keras' own
        # line off in logs, whose "18/18" counted the steps since the last checkpoint, on stdout.
        unsaid = self._pace.unsaid() if self.at_end and logs else None
        if unsaid is not None:
            self.say(self._line(self.first_step + unsaid[0], logs, unsaid[1]))

    def _line(self, step: int, logs: dict, steps_per_s: float | None) -> str:
        values = ", ".join(f"{m} {float(logs.get(m, float('nan'))):.4f}" for m in self.metrics)
        line = f"{self.stage_name}: step {step:,} of {self.total_steps:,} ({step / self.total_steps:.1%}), {values}"
        if steps_per_s is None:  # one step: no rate yet
            return line
        rate = (f"{steps_per_s * self.tokens_per_batch:,.0f} tokens/s" if self.tokens_per_batch
                else f"{steps_per_s:.2f} steps/s")
        return f"{line}, {rate}, about {duration((self.total_steps - step) / steps_per_s)} to the end of the plan"


class ScoringProgress(keras.callbacks.Callback):
    """A line "scoring <model>: batch i of N" while one model is scored: at each further tenth of the batches,
    at most one per `min_s` seconds, and at least one per `every_s`; none for the last batch (the table follows).
    It reads no logs, so the scores are Keras' own, untouched.

        >>> lines, clock = [], iter([0.0, 3.0, 4.0, 8.0, 9.0, 43.0]).__next__
        >>> p = ScoringProgress("ckpt-7", 200, say=lines.append, clock=clock)
        >>> p.on_test_begin()
        >>> for batch in (0, 9, 19, 29, 30):  # the first batch (compiling) is never a line: it sets the pace's start
        ...     p.on_test_batch_end(batch)
        >>> for line in lines:
        ...     print(line)
        scoring ckpt-7: batch 20 of 200 (10%), about < 1 min left
        scoring ckpt-7: batch 31 of 200 (16%), about 3 min left
    """

    async_safe = True  # Keras then calls it from worker threads, each after its batch is done, not holding up the next

    def __init__(self, model: str, batches: int, min_s: float | None = None, every_s: float | None = None,
                 say=log.info, clock=time.monotonic, left=None):
        """`left(seconds, batches_per_s)`: the words for the time left ("about 3 min left"); kgpt2 evaluate's
        count the models it scores after this one too."""
        super().__init__()
        self.left = left or (lambda seconds, _: f"about {duration(seconds)} left")
        self.name, self.batches, self.say, self.clock = model, batches, say, clock
        self.min_s = SCORING_GAP_S if min_s is None else min_s
        self.every_s = SCORING_EVERY_S if every_s is None else every_s

    def on_test_begin(self, logs=None):
        self._pace, self._tenth = Pace(self.clock), 0  # the tenth of the batches last reported

    def _wanted(self, done: int, since: float) -> bool:
        tenth = done * 10 // self.batches
        if done >= self.batches or since < self.min_s or (tenth == self._tenth and since < self.every_s):
            return False
        self._tenth = tenth
        return True

    def on_test_batch_end(self, batch, logs=None):
        done = batch + 1
        batches_per_s = self._pace.due(done, self._wanted)
        if batches_per_s is not None:
            self.say(f"scoring {self.name}: batch {done:,} of {self.batches:,} ({done / self.batches:.0%}), "
                     f"{self.left((self.batches - done) / batches_per_s, batches_per_s)}")
