"""Loss and metrics of next-token prediction, shared by training and evaluation.

Padding never counts: the loss divides by the sum of sample weights
(`mean_with_sample_weight`), and the weighted metrics average over real
tokens only. Perplexity is exp(mean token loss).

    >>> import numpy as np
    >>> from kgpt2.metrics import perplexity
    >>> round(perplexity(np.log(4.0)), 6)
    4.0
"""

import math

import keras


def lm_loss():
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight"
    )


def lm_metrics(token_loss: bool = True):
    # Weighted metrics accumulate sum(value * weight) / sum(weight) over the
    # whole pass, so `token_loss` is the exact mean over real tokens.
    metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if token_loss:
        metrics.append(keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="token_loss"))
    return metrics


def compile_lm(model, optimizer="adam", token_loss: bool = True, **kwargs):
    """Compile with the masked loss and the accuracy (+ exact token loss) metrics.

    Train with `token_loss=False`: a batch's loss already is its mean token
    loss, and the metric's second cross-entropy over the whole logits tensor
    cost 2-3% of an H100 training step (docs/benchmarks.md).
    """
    model.compile(optimizer=optimizer, loss=lm_loss(), weighted_metrics=lm_metrics(token_loss), **kwargs)
    return model


def evaluation_model(model):
    """A model on `model`'s backbone (the same variables) compiled with all metrics, for `evaluate`.

    Keras compiles a model's train and test steps with one metric list; this
    twin gives validation the exact token loss without adding it to every
    training step of `model`.
    """
    twin = type(model)(backbone=model.backbone, preprocessor=None)
    return compile_lm(twin)


def perplexity(token_loss: float) -> float:
    return math.exp(min(float(token_loss), 700.0))


def summarise(logs: dict) -> dict:
    """evaluate() logs -> {loss, accuracy, perplexity} over real tokens."""
    token_loss = float(logs.get("token_loss", logs.get("loss")))
    return {
        "loss": token_loss,
        "accuracy": float(logs["accuracy"]),
        "perplexity": perplexity(token_loss),
    }
