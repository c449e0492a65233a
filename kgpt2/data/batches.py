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

Instruction shards add two options: `mask` (uint8 per token, 1 = a training
target) multiplies the weights of the target tokens, so the loss is on the
responses only; `offsets` (the example boundaries) makes one window per
example, padded, instead of packed windows. `padding_fraction()` is the share
of the batches' target positions that carry no token.

`article_batches` picks the source for `data.windows`: `WindowBatches` for
"packed" (the token stream) and "example", kgpt2.data.packing's
`PackedBatches` for "packed_examples" (several examples per window, each
attending only to itself); `resolve_windows` turns "auto" into one of them.

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

import copy
import math

import numpy as np

from kgpt2.data.packing import PackedBatches, ResumableBatches

PACKED_EXAMPLES = "packed_examples"  # data.windows: several examples per window, each attending only to itself


def window_starts(lo: int, hi: int, sequence_length: int) -> np.ndarray:
    """Start offsets of the windows that cover tokens [lo, hi)."""
    n = max(0, math.ceil((hi - lo - 1) / sequence_length))
    return lo + sequence_length * np.arange(n, dtype=np.int64)


class WindowBatches(ResumableBatches):
    """Batch source over one token range for one epoch (`__len__`/`__getitem__`)."""

    def __init__(self, tokens, lo: int, hi: int, *, sequence_length: int, batch_size: int,
                 seed: int, stage: int = 0, epoch: int = 0, shuffle: bool = True,
                 start_batch: int = 0, max_batches: int | None = None, mask=None, offsets=None,
                 shift: bool = False):
        self.tokens, self.lo, self.hi, self.mask = tokens, lo, hi, mask
        self.sequence_length, self.batch_size = sequence_length, batch_size
        if offsets is None:
            starts = window_starts(lo, hi, sequence_length)
            if shift:  # a seeded offset per (stage, epoch): each epoch sees other windows
                starts = starts + np.random.default_rng([seed, stage, epoch, 1]).integers(sequence_length)
            ends = np.maximum(np.minimum(starts + sequence_length + 1, hi), np.minimum(starts, hi))
            self.truncated = 0
        else:  # one window per example, cut at sequence_length + 1 tokens
            offsets = np.asarray(offsets, dtype=np.int64)
            starts = offsets[:-1]
            ends = np.minimum(offsets[1:], starts + sequence_length + 1)
            self.truncated = int(np.sum(offsets[1:] - starts > sequence_length + 1))
        if shuffle:
            order = np.random.default_rng([seed, stage, epoch]).permutation(len(starts))
            starts, ends = starts[order], ends[order]
        self.starts, self.ends = starts, ends
        self._plan_batches(len(starts), batch_size, max_batches, start_batch)

    def _make_batch(self, b: int):
        starts = self.starts[b * self.batch_size:(b + 1) * self.batch_size]
        T = self.sequence_length
        window = np.zeros((self.batch_size, T + 1), dtype=np.int32)
        valid = np.zeros((self.batch_size, T + 1), dtype=bool)
        ends = self.ends[b * self.batch_size:(b + 1) * self.batch_size]
        target = np.ones((self.batch_size, T + 1), dtype=np.float32)
        for row, (s, e) in enumerate(zip(starts, ends)):
            chunk = self.tokens[s:e]
            window[row, :len(chunk)] = chunk
            valid[row, :len(chunk)] = True
            if self.mask is not None:
                target[row, :len(chunk)] = self.mask[s:e]
        padding_mask = valid[:, :-1].copy()
        # Rows that only fill the batch have no real token; let them attend to
        # their first position so no attention row is fully masked (a fused
        # GPU kernel may return NaN there, and 0 * NaN would reach the loss).
        padding_mask[:, 0] = True
        x = {"token_ids": window[:, :-1], "padding_mask": padding_mask}
        # A target counts when both it and its input are real tokens (and,
        # with a mask, when the mask marks it as a training target).
        weight = (valid[:, 1:] & valid[:, :-1]).astype(np.float32) * target[:, 1:]
        return x, window[:, 1:], weight

    def target_tokens(self) -> int:
        """Target positions holding a real token in the batches this source yields."""
        used = slice(self.start_batch * self.batch_size, self.total_batches * self.batch_size)
        return int(np.sum(np.maximum(self.ends[used] - self.starts[used] - 1, 0)))

    def scored_tokens(self) -> int:
        """Target tokens the loss counts: `target_tokens()`, or with a mask, the masked-in ones.

        The sum of the sample weights of every batch, without building them.
        """
        if self.mask is None:
            return self.target_tokens()
        used = slice(self.start_batch * self.batch_size, self.total_batches * self.batch_size)
        # Weights sit on targets s+1 .. e-1 of each window [s, e).
        return int(sum(int(self.mask[s + 1:e].sum()) for s, e in zip(self.starts[used], self.ends[used]) if e > s + 1))

    def padding_fraction(self) -> float:
        """Share of the target positions in this epoch's batches that hold no token."""
        real = self.target_tokens()
        slots = len(self) * self.batch_size * self.sequence_length
        return 1.0 - real / slots if slots else 0.0

    def batch_paddings(self) -> np.ndarray:
        """The padding share of each batch this source yields (what `padding_fraction` averages)."""
        real = np.zeros(self.total_batches * self.batch_size)
        used = min(len(self.starts), len(real))
        real[:used] = np.maximum(self.ends[:used] - self.starts[:used] - 1, 0)
        per_batch = real.reshape(self.total_batches, self.batch_size).sum(axis=1)
        return (1.0 - per_batch / (self.batch_size * self.sequence_length))[self.start_batch:]

    @property
    def num_windows(self) -> int:
        return len(self.starts)

    def take_rows(self, rows, batch_size: int) -> WindowBatches:
        """These windows only (positions in this epoch's order), in batches of `batch_size` (one process's rows)."""
        local = copy.copy(self)
        local.starts, local.ends, local.batch_size = self.starts[rows], self.ends[rows], batch_size
        return local


class EpochBatches:
    """Several epochs of one stage as one batch source, from global batch `start` on.

    Batch `i` is batch `i % per_epoch` of epoch `i // per_epoch`, each epoch
    with its own permutation, so one `fit` call can cross epoch boundaries
    (a `fit` call costs a fresh iterator and, on JAX, a host sync).
    `make_epoch(e)` returns epoch e's `WindowBatches`.
    """

    def __init__(self, make_epoch, per_epoch: int, start: int, end: int):
        self.make_epoch, self.per_epoch, self.start, self.end = make_epoch, per_epoch, start, end
        self._epoch, self._source = None, None

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        epoch, batch = divmod(self.start + index, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._source = epoch, self.make_epoch(epoch)
        return self._source[batch]

    def batch_paddings(self) -> np.ndarray:
        """The padding share of each batch, in order (for the step log)."""
        first, last = divmod(self.start, self.per_epoch)[0], divmod(max(self.start, self.end - 1), self.per_epoch)[0]
        shares = np.concatenate([self.make_epoch(e).batch_paddings() for e in range(first, last + 1)])
        at = self.start - first * self.per_epoch
        return shares[at:at + len(self)]


def article_batches(split, first: int, end: int, *, windows: str, loss_on: str, shift: bool = False, **options):
    """The batch source of articles [first, end) of a shard split for `data.windows`.

    "packed" and "example": `WindowBatches` (`split_options`); "packed_examples":
    `PackedBatches` (kgpt2.data.packing). `options`: sequence_length,
    batch_size, seed, stage, epoch, shuffle, start_batch, max_batches.
    """
    if windows == PACKED_EXAMPLES:
        return PackedBatches(split, first, end, loss_on=loss_on, **options)
    lo, hi = split.token_range(first, end)
    return WindowBatches(split.tokens, lo, hi, shift=shift, **options,
                         **split_options(split, first, end, loss_on, windows))


def resolve_windows(windows: str, manifest: dict) -> str:
    """`data.windows = "auto"` for a shard set: "packed_examples" for examples (shards with a loss mask:
    instruction, chat, preference sources), "packed" (the token stream) for articles."""
    if windows != "auto":
        return windows
    return PACKED_EXAMPLES if any(info.get("mask") for info in manifest["splits"].values()) else "packed"


def split_options(split, first: int, end: int, loss_on: str = "response", windows: str = "packed") -> dict:
    """WindowBatches keyword arguments for articles [first, end) of a shard split.

    `loss_on`: "response" uses the split's loss mask when it has one, "all"
    ignores it. `windows`: "packed" or "example" (one padded window per article).
    kgpt2.config checks both choices when the config is read.
    """
    options = {}
    if loss_on == "response" and getattr(split, "mask", None) is not None:
        options["mask"] = split.mask
    if windows == "example":
        options["offsets"] = split.offsets[first:end + 1]
    return options


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
