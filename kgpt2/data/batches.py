"""Batches of packed next-token windows, read straight from memory-mapped shards.

A token range (a stage's articles, or a whole split) is cut into windows of
`sequence_length + 1` tokens with stride `sequence_length`, so every token is
predicted exactly once. Each epoch visits the windows in a permutation seeded
by (seed, stage, epoch); batch `b` of an epoch is therefore a pure function of
those numbers, which is what makes a resume land on the exact next batch.

Batches come out as `(x, y, sample_weight)` with
`x = {"token_ids", "padding_mask"}`; tokens past the end of the range (the
last window, and rows that fill the last batch) get weight 0. Every batch has
the same shape, so nothing recompiles.

`to_dataset` wraps a batch source for `fit`/`evaluate`: a `grain.MapDataset`
(no TensorFlow needed, so it also runs on the GPU machine) or, without grain,
a `tf.data.Dataset`.

    >>> import numpy as np
    >>> from kgpt2.data.batches import WindowBatches
    >>> b = WindowBatches(np.arange(100, dtype=np.uint16), 0, 100, sequence_length=8,
    ...                   batch_size=4, seed=0, shuffle=False)
    >>> len(b), b[0][0]["token_ids"].shape
    (4, (4, 8))
"""

from __future__ import annotations

import math

import numpy as np


def window_starts(lo: int, hi: int, sequence_length: int) -> np.ndarray:
    """Start offsets of the windows that cover tokens [lo, hi)."""
    n = max(0, math.ceil((hi - lo - 1) / sequence_length))
    return lo + sequence_length * np.arange(n, dtype=np.int64)


class WindowBatches:
    """Batch source over one token range for one epoch (`__len__`/`__getitem__`)."""

    def __init__(self, tokens, lo: int, hi: int, *, sequence_length: int, batch_size: int,
                 seed: int, stage: int = 0, epoch: int = 0, shuffle: bool = True,
                 start_batch: int = 0, max_batches: int | None = None):
        self.tokens, self.lo, self.hi = tokens, lo, hi
        self.sequence_length, self.batch_size = sequence_length, batch_size
        starts = window_starts(lo, hi, sequence_length)
        if shuffle:
            rng = np.random.default_rng([seed, stage, epoch])
            starts = starts[rng.permutation(len(starts))]
        self.starts = starts
        total = math.ceil(len(starts) / batch_size)
        if max_batches is not None:
            total = min(total, max_batches)
        self.total_batches = total
        self.start_batch = start_batch

    @property
    def num_windows(self) -> int:
        return len(self.starts)

    def __len__(self) -> int:
        return max(0, self.total_batches - self.start_batch)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        b = index + self.start_batch
        starts = self.starts[b * self.batch_size:(b + 1) * self.batch_size]
        T = self.sequence_length
        window = np.zeros((self.batch_size, T + 1), dtype=np.int32)
        valid = np.zeros((self.batch_size, T + 1), dtype=bool)
        for row, s in enumerate(starts):
            chunk = self.tokens[s:min(s + T + 1, self.hi)]
            window[row, :len(chunk)] = chunk
            valid[row, :len(chunk)] = True
        x = {"token_ids": window[:, :-1], "padding_mask": valid[:, :-1]}
        # A target counts when both it and its input are real tokens.
        weight = (valid[:, 1:] & valid[:, :-1]).astype(np.float32)
        return x, window[:, 1:], weight

    def real_tokens(self) -> int:
        """Predicted tokens in this source (padding excluded)."""
        return max(0, self.hi - self.lo - 1) if len(self.starts) else 0


def to_dataset(source):
    """Wrap a batch source for Keras `fit`/`evaluate`/`predict`."""
    try:
        import grain
    except ImportError:  # pragma: no cover - grain is a dependency; tf.data as a fallback
        return _to_tf_dataset(source)
    return grain.MapDataset.source(source)


def _to_tf_dataset(source):
    import tensorflow as tf

    x, y, w = source[0]
    spec = (
        {k: tf.TensorSpec(v.shape, tf.as_dtype(v.dtype)) for k, v in x.items()},
        tf.TensorSpec(y.shape, tf.int32),
        tf.TensorSpec(w.shape, tf.float32),
    )
    return tf.data.Dataset.from_generator(
        lambda: (source[i] for i in range(len(source))), output_signature=spec
    ).prefetch(2)
