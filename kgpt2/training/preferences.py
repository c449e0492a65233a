"""Scoring responses with a policy: the log-probs every preference loss reads.

`PolicyLogProbs` wraps a GPT2CausalLM and outputs, per row of the [N, 2, T]
arrays of `kgpt2.data.preference_pairs.encode_rows`, the summed log-prob of
each response given its prompt (both slots in one forward pass).
`targets_for` lays the reference log-probs, token counts and KTO labels out
as the `y_true` of `kgpt2.training.preference_losses`, and `score_heldout` gives the
held-out reward accuracy and margins that `kgpt2 align` and `kgpt2 evaluate`
report.

    >>> import numpy as np
    >>> from kgpt2.training.preferences import targets_for
    >>> targets_for(np.array([[-3.0, -4.0]]), {"weights": np.ones((1, 2, 5))}).tolist()
    [[-3.0, -4.0, 5.0, 5.0, 1.0]]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import ops

from kgpt2.data.preference_pairs import check_heldout_split, encode_pairs, encode_rows, heldout_scores, kto_rows, unpair
from kgpt2.training.preference_losses import kto_metrics, pair_metrics, preference_loss

REFERENCE_FILE = "reference.npz"  # in the run folder: log-probs before alignment (train and held-out rows)


def reference_path(run_dir) -> Path:
    return Path(run_dir) / REFERENCE_FILE


@dataclass
class Encoded:
    """The rows `kgpt2 align` trains and judges on, as `encode_rows` arrays with a label per row."""

    held_x: dict
    held_labels: np.ndarray
    train_x: dict
    train_labels: np.ndarray


def encode_preferences(cfg, pairs: list, unpaired: list, tokenizer, stats=None) -> Encoded:
    """The held-out and training rows of `kgpt2 align` (and of `kgpt2 evaluate` on its run).

    Prompts are held out by a seeded hash (a side left empty is refused:
    `check_heldout_split`). Paired losses: held-out and training pairs (slot 0 chosen, slot 1 rejected). `align.loss = "kto"`:
    desirable / undesirable examples (the pairs unpaired, plus the unpaired
    ones, e.g. demo thumbs), each with a mismatched completion in slot 1, on
    both sides of the split: KTO is judged on held-out examples, as TRL does.
    """
    a, T = cfg.align, cfg.data.sequence_length
    examples = unpair(pairs) + unpaired if a.loss == "kto" else pairs
    scores = heldout_scores([e["prompt"] for e in examples], cfg.seed)
    held = scores < a.heldout_fraction
    if a.loss == "kto":
        parts = [_kto_encoded([e for e, h in zip(examples, held) if h == side], tokenizer, T, cfg.seed, stats)
                 for side in (True, False)]
        out = Encoded(*parts[0], *parts[1])
    else:
        held_x, _ = encode_pairs(tokenizer, [p for p, h in zip(pairs, held) if h], T, stats)
        rows = [(p["prompt"], p["chosen"], p["rejected"]) for p, h in zip(pairs, held) if not h]
        train_x, kept = encode_rows(tokenizer, rows, T, stats)
        out = Encoded(held_x, np.ones(len(held_x["token_ids"]), "float32"), train_x, np.ones(len(kept), "float32"))
    check_heldout_split(scores, len(out.train_labels), len(out.held_labels), a.heldout_fraction,
                        "examples" if a.loss == "kto" else "pairs")
    return out


def _kto_encoded(examples: list, tokenizer, T: int, seed: int, stats) -> tuple[dict, np.ndarray]:
    x, kept = encode_rows(tokenizer, kto_rows(examples, seed), T, stats)
    return x, np.array([examples[k]["label"] for k in kept], "float32")


def token_logprobs(logits, targets):
    """log softmax(logits)[target] per position, in float32."""
    logits = ops.cast(logits, "float32")
    picked = ops.squeeze(ops.take_along_axis(logits, ops.expand_dims(targets, -1), axis=-1), -1)
    return picked - ops.logsumexp(logits, axis=-1)


class PolicyLogProbs(keras.Model):
    """[log pi(slot 0), log pi(slot 1)] per row, summed over response tokens."""

    def __init__(self, policy, **kwargs):
        super().__init__(**kwargs)
        self.policy = policy

    def call(self, inputs):
        shape = ops.shape(inputs["token_ids"])  # [B, 2, T]
        flat = lambda x: ops.reshape(x, (-1, shape[-1]))  # noqa: E731  (both slots in one pass)
        logits = self.policy({"token_ids": flat(inputs["token_ids"]),
                              "padding_mask": flat(inputs["padding_mask"])})
        logp = token_logprobs(logits, flat(inputs["targets"])) * flat(ops.cast(inputs["weights"], "float32"))
        return ops.reshape(ops.sum(logp, axis=-1), (-1, 2))


def take(inputs: dict, index) -> dict:
    return {k: v[index] for k, v in inputs.items()}


def predict_logprobs(model: PolicyLogProbs, inputs: dict, batch_size: int) -> np.ndarray:
    """[N, 2] log-probs, rows padded to whole batches (data parallel splits every batch evenly)."""
    n = len(inputs["token_ids"])
    padded = take(inputs, np.resize(np.arange(n), -(-n // batch_size) * batch_size)) if n % batch_size else inputs
    return np.asarray(model.predict(padded, batch_size=batch_size, verbose=0), "float32")[:n]


def targets_for(reference: np.ndarray, inputs: dict, labels=None) -> np.ndarray:
    """y_true [N, 5]: reference log-probs of both slots, their response token counts, the KTO label."""
    counts = np.asarray(inputs["weights"], "float32").sum(axis=-1)
    labels = np.ones(len(reference), "float32") if labels is None else np.asarray(labels, "float32")
    return np.concatenate([np.asarray(reference, "float32"), counts, labels[:, None]], axis=1)


def score_heldout(y_true: np.ndarray, y_pred: np.ndarray, kind: str, beta: float, **loss_options) -> dict:
    """Reward accuracy, margin, rewards and the loss on the held-out rows (pairs; KTO: examples)."""
    metrics = (kto_metrics if kind == "kto" else pair_metrics)(y_true, y_pred, kind, beta)
    loss = preference_loss(y_true, y_pred, kind, beta, **loss_options)
    metrics["loss"] = float(np.mean(np.asarray(loss, "float64")))
    return metrics
