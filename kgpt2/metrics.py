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


def lm_metrics():
    # Weighted metrics accumulate sum(value * weight) / sum(weight) over the
    # whole pass, so `token_loss` is the exact mean over real tokens.
    return [
        keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="token_loss"),
    ]


def compile_lm(model, optimizer="adam", **kwargs):
    model.compile(optimizer=optimizer, loss=lm_loss(), weighted_metrics=lm_metrics(), **kwargs)
    return model


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
