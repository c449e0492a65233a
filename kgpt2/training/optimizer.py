"""The optimizer every trainer uses: Keras AdamW with linear warmup and cosine decay.

The schedule runs over the global step count of all stages (or all
alignment steps), so a resumed run continues on the same curve.

    >>> from kgpt2.config import Config
    >>> from kgpt2.training.optimizer import make_optimizer
    >>> optimizer, schedule = make_optimizer(Config(), total_steps=100)
    >>> type(optimizer).__name__, float(schedule(0)) == 0.0 or Config().train.warmup_steps == 0
    ('AdamW', True)
"""

from __future__ import annotations

import keras

from kgpt2.config import Config


def make_schedule(cfg: Config, total_steps: int):
    """Warmup to `train.learning_rate`, then cosine down to `train.min_learning_rate`.

    Over `train.decay_steps` when set (nanoGPT's lr_decay_iters: a run cut
    short follows the longer run's curve), else over the run's `total_steps`.
    """
    t = cfg.train
    total_steps = t.decay_steps or total_steps
    warmup = min(t.warmup_steps, max(0, total_steps - 1))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else t.learning_rate,
        decay_steps=max(1, total_steps - warmup),
        alpha=t.min_learning_rate / t.learning_rate if t.learning_rate else 0.0,
        warmup_target=t.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(cfg: Config, total_steps: int):
    """(AdamW, its schedule) from `cfg.train`: clipping, accumulation, decay exclusions."""
    t = cfg.train
    schedule = make_schedule(cfg, total_steps)
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


def build_optimizer(optimizer, model) -> None:
    """Create the optimizer's slots for `model`'s trainable variables now, before the first `fit` (trainer and
    aligner) or before a checkpoint's optimizer state is loaded into them (kgpt2.training.checkpoints).

    Left to `fit`, Keras' TensorFlow trainer creates them inside the first traced step, and TensorFlow
    then traces that step twice (a tiny run on CPU: 11.4 s -> ~8 s). Pass the compiled model's
    `.optimizer`: under mixed_float16, the LossScaleOptimizer Keras put around ours.
    """
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
