"""The optimizer every trainer uses: Keras AdamW with linear warmup and cosine decay.

The schedule runs over the global step count of all stages (or all
alignment steps), so a resumed run continues on the same curve.

    >>> from kgpt2.config import Config
    >>> from kgpt2.optimizer import make_optimizer
    >>> optimizer, schedule = make_optimizer(Config(), total_steps=100)
    >>> type(optimizer).__name__, float(schedule(0)) == 0.0 or Config().train.warmup_steps == 0
    ('AdamW', True)
"""

from __future__ import annotations

import keras

from kgpt2.config import Config


def make_schedule(cfg: Config, total_steps: int):
    """Warmup to `train.learning_rate`, then cosine down to `train.min_learning_rate`."""
    t = cfg.train
    warmup = min(t.warmup_steps, max(0, total_steps - 1))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else t.learning_rate,
        decay_steps=max(1, total_steps - warmup),
        alpha=t.min_learning_rate / t.learning_rate if t.learning_rate else 0.0,
        warmup_target=t.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


class ContinuedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine from `learning_rate` at step `start` down to `min_learning_rate` at `total`.

    A run trained further (more stages, a longer plan) keeps its step count;
    its curve carries on from the rate it had instead of restarting warmup.
    Keras' CosineDecay always starts at step 0, hence this offset.
    """

    def __init__(self, start: int, learning_rate: float, total: int, min_learning_rate: float = 0.0):
        self.start, self.learning_rate, self.total, self.min_learning_rate = start, learning_rate, total, min_learning_rate
        self.cosine = keras.optimizers.schedules.CosineDecay(
            learning_rate, max(1, total - start), alpha=min_learning_rate / learning_rate if learning_rate else 0.0)

    def __call__(self, step):
        return self.cosine(keras.ops.maximum(keras.ops.cast(step, "float32") - self.start, 0.0))

    def get_config(self):
        return {"start": self.start, "learning_rate": self.learning_rate, "total": self.total,
                "min_learning_rate": self.min_learning_rate}


def make_optimizer(cfg: Config, total_steps: int, continued: dict | None = None):
    """(AdamW, its schedule) from `cfg.train`: clipping, accumulation, decay exclusions.

    `continued` ({"start", "learning_rate", "total"}): a continued run's schedule (`ContinuedSchedule`).
    """
    t = cfg.train
    schedule = (ContinuedSchedule(continued["start"], continued["learning_rate"], continued["total"], t.min_learning_rate)
                if continued else make_schedule(cfg, total_steps))
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=t.weight_decay,
        beta_2=t.beta_2,
        clipnorm=None if t.global_clipnorm else t.clipnorm or None,
        global_clipnorm=t.clipnorm or None if t.global_clipnorm else None,
        gradient_accumulation_steps=t.gradient_accumulation_steps if t.gradient_accumulation_steps > 1 else None,
    )
    if t.no_decay:  # e.g. biases and layer norms, as nanoGPT and HF's Trainer do
        optimizer.exclude_from_weight_decay(var_names=list(t.no_decay))
    return optimizer, schedule
