"""Evaluation batching: a whole split in order, scored with the run's loss mask.

Training's validation after each stage, periodic evaluation and
`kgpt2 evaluate` all score the same batches through these two functions, so
their numbers agree.

    >>> from kgpt2.training.validation import evaluate_split, split_batches
    >>> # evaluate_split(evaluator, cfg, ShardSet(cfg.data.shards), "validation", max_batches=8)
    >>> # {'loss': 3.21, 'accuracy': 0.41, 'perplexity': 24.8}
"""

from __future__ import annotations

from kgpt2.config import Config
from kgpt2.data.batches import article_batches, to_dataset
from kgpt2.data.shards import ShardSet
from kgpt2.training.distribution import local_rows
from kgpt2.training.metrics import summarise


def split_batches(cfg: Config, split, max_batches: int | None, batch_size: int | None = None):
    """A whole split in order (no shuffle), with the run's loss mask and windows: what evaluation sees.

    Packed examples (`data.windows = "packed_examples"`) are scored packed,
    each attending only to itself: the same per-token losses as one example
    per window, in fewer batches.
    """
    # Each process of a multi-host run reads and feeds its own rows of every batch.
    return local_rows(article_batches(split, 0, split.num_articles, windows=cfg.data.windows, loss_on=cfg.data.loss_on,
                                      sequence_length=cfg.data.sequence_length,
                                      batch_size=batch_size or cfg.train.batch_size, seed=cfg.seed, shuffle=False,
                                      max_batches=max_batches))


def evaluate_split(model, cfg: Config, shards: ShardSet, split_name: str, max_batches: int) -> dict:
    """Validation metrics over the first `max_batches` batches of a split (in order); {} without one."""
    if max_batches == 0 or split_name not in shards.manifest["splits"]:
        return {}
    split = shards.split(split_name)
    if split.num_articles == 0:
        return {}
    source = split_batches(cfg, split, max_batches if max_batches > 0 else None)
    logs = model.evaluate(to_dataset(source), verbose=0, return_dict=True)
    return summarise(logs)
