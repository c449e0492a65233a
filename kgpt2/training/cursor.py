"""Where a staged run stands: the exact next batch, as a value.

The trainer passes a `Cursor` from step to step and returns a new one; every
checkpoint records it (`Cursor.from_state` reads it back), so a run killed at
any moment restarts at the exact next batch. `stage` is the index of the
stage running (after a stage ends, the stages finished); `epoch` and `batch`
locate the next batch in it; `step` counts the optimizer steps of all stages.

    >>> from kgpt2.training.cursor import Cursor
    >>> Cursor(stage=1, epoch=0, batch=4, step=12).advanced(8, per_epoch=10, first=4)
    Cursor(stage=1, epoch=1, batch=2, step=20)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Cursor:
    """Where training stands: the next batch to train and the steps done."""

    stage: int = 0
    epoch: int = 0
    batch: int = 0
    step: int = 0

    @classmethod
    def from_state(cls, state: dict) -> Cursor:
        return cls(**{f.name: int(state[f.name]) for f in dataclasses.fields(cls)})

    def position(self, per_epoch: int) -> int:
        """Batches of the current stage done, over all its epochs."""
        return self.epoch * per_epoch + self.batch

    def advanced(self, n: int, per_epoch: int, first: int) -> Cursor:
        """After `n` more steps that started at stage position `first`."""
        epoch, batch = divmod(first + n, per_epoch)
        return dataclasses.replace(self, epoch=epoch, batch=batch, step=self.step + n)

    def next_stage(self) -> Cursor:
        return Cursor(stage=self.stage + 1, epoch=0, batch=0, step=self.step)
