"""Preference losses of `kgpt2 align`, written from TRL's trainers, in Keras ops.

Every loss reads the same two arrays, so one model and one `fit` serve all:

    y_pred [B, 2]  log pi of slot 0 and slot 1, summed over the response tokens
    y_true [B, 5]  log ref of slot 0 and 1, response token counts n0 and n1,
                   and a label (KTO: 1 desirable, 0 undesirable; else 1)

Paired losses (slot 0 chosen, slot 1 rejected), with logits = (log pi(c) -
log pi(r)) - (log ref(c) - log ref(r)) and eps = label smoothing:

    dpo    -(1 - eps) log sigmoid(beta logits) - eps log sigmoid(-beta logits)
    ipo    (logits - 1 / (2 beta))^2, log-probs averaged per token (as TRL)
    hinge  relu(1 - beta logits)
    simpo  dpo's form on beta (avg log pi(c) - avg log pi(r)) - gamma;
           no reference (TRL's CPOTrainer, loss_type="simpo")
    orpo   NLL of chosen (per token) - beta log sigmoid(log odds(c) - log odds(r)),
           odds(y) = p / (1 - p) of the per-token average; no reference

KTO is unpaired: slot 0 holds the example, slot 1 a mismatched completion
(another row's answer to this row's prompt) whose batch-mean log-ratio is the
KL estimate z (clamped at 0, no gradient), as TRL's KTOTrainer does:

    kto    desirable 1 - sigmoid(beta (r - z)), undesirable 1 - sigmoid(beta (z - r))

Held out, paired losses are judged by `pair_metrics`, KTO on examples by
`kto_metrics` (how often a desirable example's reward beats an undesirable one's).

TRL is torch-only; these are its formulas on any Keras backend.

    >>> import numpy as np
    >>> from kgpt2.training.preference_losses import PreferenceLoss
    >>> y_true = np.array([[-5.0, -5.0, 2, 2, 1]])
    >>> round(float(PreferenceLoss("dpo", beta=0.1)(y_true, np.array([[-4.0, -6.0]]))), 4)
    0.5981
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

LOSSES = ("dpo", "ipo", "hinge", "simpo", "orpo", "kto")
REFERENCE_FREE = ("simpo", "orpo")  # no reference log-probs needed
PER_TOKEN = ("ipo", "simpo", "orpo")  # log-probs averaged over the response tokens


def _columns(y_true, y_pred, kind: str):
    """(pi0, pi1, ref0, ref1, label) in float32; per-token averages where the loss uses them."""
    y_true, y_pred = ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")
    pi0, pi1, ref0, ref1 = y_pred[:, 0], y_pred[:, 1], y_true[:, 0], y_true[:, 1]
    if kind in PER_TOKEN:
        n0, n1 = ops.maximum(y_true[:, 2], 1.0), ops.maximum(y_true[:, 3], 1.0)
        pi0, pi1, ref0, ref1 = pi0 / n0, pi1 / n1, ref0 / n0, ref1 / n1
    return pi0, pi1, ref0, ref1, y_true[:, 4]


def rewards(y_true, y_pred, kind: str, beta: float):
    """The implicit rewards of slot 0 and slot 1: beta (log pi - log ref), or beta log pi without a reference."""
    pi0, pi1, ref0, ref1, _ = _columns(y_true, y_pred, kind)
    if kind in REFERENCE_FREE:
        return beta * pi0, beta * pi1
    return beta * (pi0 - ref0), beta * (pi1 - ref1)


def _log1mexp(x):
    """log(1 - e^x) for x < 0, stable at both ends (Maechler, 2012)."""
    x = ops.minimum(x, -1e-6)
    return ops.where(x > -0.6931, ops.log(-ops.expm1(x)), ops.log1p(-ops.exp(x)))


def preference_loss(y_true, y_pred, kind: str, beta: float, label_smoothing: float = 0.0,
                    simpo_gamma: float = 0.5):
    """The per-row loss [B] of `kind` (see the module docstring)."""
    pi0, pi1, ref0, ref1, label = _columns(y_true, y_pred, kind)
    eps = label_smoothing
    if kind in ("dpo", "ipo", "hinge"):
        logits = (pi0 - pi1) - (ref0 - ref1)
        if kind == "ipo":
            return ops.square(logits - 1.0 / (2.0 * beta))
        if kind == "hinge":
            return ops.relu(1.0 - beta * logits)
        return -(1 - eps) * ops.log_sigmoid(beta * logits) - eps * ops.log_sigmoid(-beta * logits)
    if kind == "simpo":
        logits = (pi0 - pi1) - simpo_gamma / beta
        return -(1 - eps) * ops.log_sigmoid(beta * logits) - eps * ops.log_sigmoid(-beta * logits)
    if kind == "orpo":
        log_odds = (pi0 - pi1) - (_log1mexp(pi0) - _log1mexp(pi1))
        # TRL's NLL is the mean over every chosen token of the batch: sum log pi / sum n.
        n0 = ops.maximum(ops.cast(y_true, "float32")[:, 2], 1.0)
        nll = -ops.sum(pi0 * n0) / ops.sum(n0)
        return nll - beta * ops.log_sigmoid(log_odds)
    if kind == "kto":
        kl = ops.stop_gradient(ops.maximum(ops.mean(pi1 - ref1), 0.0))
        ratio = pi0 - ref0
        desirable = 1.0 - ops.sigmoid(beta * (ratio - kl))
        undesirable = 1.0 - ops.sigmoid(beta * (kl - ratio))
        return ops.where(label > 0.5, desirable, undesirable)
    raise ValueError(f"unknown preference loss {kind!r}; one of {', '.join(LOSSES)}")


class PreferenceLoss(keras.losses.Loss):
    """A Keras loss for `fit`: `kind` in LOSSES, y_true/y_pred as in the module docstring."""

    def __init__(self, kind: str = "dpo", beta: float = 0.1, label_smoothing: float = 0.0,
                 simpo_gamma: float = 0.5, name=None, **kwargs):
        super().__init__(name=name or f"{kind}_loss", **kwargs)
        if kind not in LOSSES:
            raise ValueError(f"unknown preference loss {kind!r}; one of {', '.join(LOSSES)}")
        self.kind, self.beta, self.label_smoothing, self.simpo_gamma = kind, beta, label_smoothing, simpo_gamma

    def call(self, y_true, y_pred):
        return preference_loss(y_true, y_pred, self.kind, self.beta, self.label_smoothing, self.simpo_gamma)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "beta": self.beta,
                "label_smoothing": self.label_smoothing, "simpo_gamma": self.simpo_gamma}


def pair_metrics(y_true, y_pred, kind: str, beta: float) -> dict:
    """Held-out paired metrics (numpy): reward accuracy (ties are no win), mean margin, mean rewards."""
    r0, r1 = rewards(np.asarray(y_true, "float32"), np.asarray(y_pred, "float32"), kind, beta)
    r0, r1 = np.asarray(r0, "float64"), np.asarray(r1, "float64")
    margin = r0 - r1
    return {"reward_accuracy": float(np.mean(margin > 0)), "reward_margin": float(margin.mean()),
            "chosen_reward": float(r0.mean()), "rejected_reward": float(r1.mean()), "pairs": int(len(margin))}


def kto_metrics(y_true, y_pred, kind: str = "kto", beta: float = 0.1) -> dict:
    """Held-out KTO metrics (numpy) on examples: reward r = beta (log pi - log ref) of slot 0, per label.

    ranking_accuracy: the share of (desirable, undesirable) example pairs
    whose desirable reward is higher (pair_metrics' accuracy for unpaired
    data; ties are no win); sign_accuracy: the share with the label's sign.
    reward_accuracy is the ranking accuracy, or the sign accuracy when the
    held-out examples have one label only; reward_margin likewise the mean
    desirable minus the mean undesirable reward, or the mean signed reward.
    KTO tends to lower every log-prob, so the ranking is the fairer score.
    """
    r, _ = rewards(np.asarray(y_true, "float32"), np.asarray(y_pred, "float32"), "kto", beta)
    r = np.asarray(r, "float64")
    good = np.asarray(y_true, "float32")[:, 4] > 0.5
    signed = np.where(good, r, -r)
    both = bool(good.any() and (~good).any())
    ranking = float((r[good][:, None] > r[~good][None, :]).mean()) if both else None
    mean = lambda x: float(x.mean()) if len(x) else None  # noqa: E731
    sign = float(np.mean(signed > 0))
    return {"reward_accuracy": sign if ranking is None else ranking,
            "reward_margin": mean(r[good]) - mean(r[~good]) if both else float(signed.mean()),
            "chosen_reward": mean(r[good]), "rejected_reward": mean(r[~good]), "pairs": int(len(r)),
            "ranking_accuracy": ranking, "sign_accuracy": sign, "desirable": int(good.sum()),
            "undesirable": int((~good).sum())}
