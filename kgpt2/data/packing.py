"""Packing instruction / chat examples into full windows, each example kept apart.

Examples (token ids + loss mask, as kgpt2.data.examples encodes them) are
placed greedily, in order, into windows of `sequence_length + 1` tokens
(first fit: an example goes into the first window with room, so the order
and the windows are deterministic). Each window carries, per position:
the input token, its segment (1, 2, ... per example; 0 = padding), its
position within its example (restarting at 0), the target (the next token of
the same example) and a loss weight (1 only on response targets: no loss on
prompts, padding, or across an example boundary). An example longer than a
window is cut, as with one example per window. kgpt2.model.packed_attention runs
the model over these.

    >>> import numpy as np
    >>> from kgpt2.data.packing import pack_examples
    >>> ex = [(np.array([5, 6, 7]), np.array([0, 1, 1])), (np.array([8, 9]), np.array([0, 1]))]
    >>> w = pack_examples(ex, sequence_length=5)
    >>> w["token_ids"].tolist(), w["segment_ids"].tolist(), w["positions"].tolist()
    ([[5, 6, 8, 0, 0]], [[1, 1, 2, 0, 0]], [[0, 1, 0, 0, 0]])
    >>> w["targets"].tolist(), w["weights"].tolist()
    ([[6, 7, 9, 0, 0]], [[1.0, 1.0, 1.0, 0.0, 0.0]])

`PackedBatches` is the training batch source of `data.windows =
"packed_examples"`: the examples of a split's article range are packed once
(in shard order, so the windows are a pure function of the shards and the
window length), and each epoch visits the windows in a permutation seeded by
(seed, stage, epoch), as `WindowBatches` does, so a resume lands on the
exact next batch. Batches are `({token_ids, segment_ids, positions},
targets, weights)`.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass

import numpy as np

INPUTS = ("token_ids", "segment_ids", "positions")


def first_fit(lengths, capacity: int) -> list[list[int]]:
    """Example indices per bin, first fit in order (lengths cut at capacity).

    A max tree over the bins' free room finds the first bin with room in
    O(log n), so 52,000 Alpaca examples pack in about a second.
    """
    size = 1
    while size < max(1, len(lengths)):
        size *= 2
    tree = [capacity] * (2 * size)  # free room; bins not opened yet are empty (full room)
    bins: list[list[int]] = []
    for i, n in enumerate(lengths):
        need, node = max(0, min(int(n), capacity)), 1
        while node < size:  # the leftmost leaf with room >= need
            node = 2 * node if tree[2 * node] >= need else 2 * node + 1
        b = node - size
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
        tree[node] -= need
        node //= 2
        while node:
            best = max(tree[2 * node], tree[2 * node + 1])
            if tree[node] == best:
                break
            tree[node], node = best, node // 2
    return bins


def _empty(rows: int, T: int) -> dict:
    arrays = {k: np.zeros((rows, T), "int32") for k in (*INPUTS, "targets")}
    arrays["weights"] = np.zeros((rows, T), "float32")
    return arrays


def _place(arrays: dict, row: int, at: int, segment: int, ids, mask) -> int:
    """Write one example (ids cut at T + 1) at position `at` of window `row`; return the next free position."""
    n = len(ids) - 1
    sl = slice(at, at + n)
    arrays["token_ids"][row, sl], arrays["targets"][row, sl] = ids[:-1], ids[1:]
    arrays["segment_ids"][row, sl], arrays["positions"][row, sl] = segment, np.arange(n)
    arrays["weights"][row, sl] = mask[1:]
    return at + n


def pack_examples(examples, sequence_length: int) -> dict:
    """[W, T] arrays token_ids, segment_ids, positions, targets, weights of packed windows.

    `examples`: (ids, mask) per example, ids ending in end-of-text, mask 1 on
    the tokens to learn. An example of n tokens takes n - 1 input positions
    (its last token is only a target), so targets never cross examples.
    """
    T = sequence_length
    lengths = [min(len(ids), T + 1) - 1 for ids, _ in examples]  # input positions per example
    bins = first_fit(lengths, T)
    arrays = _empty(len(bins), T)
    for w, members in enumerate(bins):
        at = 0
        for seg, i in enumerate(members, 1):
            ids, mask = (np.asarray(a)[:T + 1] for a in examples[i])
            at = _place(arrays, w, at, seg, ids, mask)
    return arrays


def padding_fraction(windows: dict) -> float:
    """Share of the window positions that hold no example."""
    return float(np.mean(windows["segment_ids"] == 0))


@dataclass(frozen=True)
class Layout:
    """Where each example of an article range goes: window w holds examples members[bounds[w]:bounds[w+1]]."""

    members: np.ndarray  # example indices (relative to the range), window by window
    bounds: np.ndarray  # [windows + 1]
    fill: np.ndarray  # input positions used per window
    positions: np.ndarray  # input positions per example (its tokens, cut at T + 1, minus one)

    @property
    def num_windows(self) -> int:
        return len(self.bounds) - 1


_LAYOUTS: dict = {}  # (example lengths digest, T) -> Layout: one packing per stage and split, reused by every epoch


def layout(offsets, sequence_length: int) -> Layout:
    """The first-fit packing of the examples between `offsets` (a split's article offsets, first..end)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    key = (hashlib.sha1(np.diff(offsets).tobytes()).hexdigest(), sequence_length)
    if key not in _LAYOUTS:
        positions = np.maximum(np.minimum(np.diff(offsets), sequence_length + 1) - 1, 0)
        bins = first_fit(positions.tolist(), sequence_length)
        members = np.fromiter((i for b in bins for i in b), dtype=np.int64, count=len(positions))
        bounds = np.concatenate([[0], np.cumsum([len(b) for b in bins])]).astype(np.int64)
        fill = np.add.reduceat(positions[members], bounds[:-1]) if len(members) else np.zeros(0, np.int64)
        if len(_LAYOUTS) >= 16:
            _LAYOUTS.pop(next(iter(_LAYOUTS)))
        _LAYOUTS[key] = Layout(members, bounds, fill, positions)
    return _LAYOUTS[key]


class ResumableBatches:
    """One epoch's batches from `start_batch` on, at most `max_batches` (`__len__`/`__getitem__`, as Keras reads).

    Shared by token-stream windows (kgpt2.data.batches) and packed examples:
    a subclass calls `_plan_batches` and makes the epoch's batch `b` in `_make_batch(b)`,
    so a resumed epoch's batch i is the uninterrupted epoch's batch start_batch + i.
    """

    def _plan_batches(self, windows: int, batch_size: int, max_batches: int | None, start_batch: int) -> None:
        total = math.ceil(windows / batch_size)
        self.total_batches = total if max_batches is None else min(total, max_batches)
        self.start_batch = start_batch

    def __len__(self) -> int:
        return max(0, self.total_batches - self.start_batch)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._make_batch(index + self.start_batch)


class PackedBatches(ResumableBatches):
    """Batches of packed examples [first, end) of a shard split, for one epoch (`__len__`/`__getitem__`).

    `loss_on = "response"` weighs the targets by the split's loss mask (when
    it has one), "all" weighs every target of an example.
    """

    def __init__(self, split, first: int, end: int, *, sequence_length: int, batch_size: int, seed: int,
                 stage: int = 0, epoch: int = 0, shuffle: bool = True, start_batch: int = 0,
                 max_batches: int | None = None, loss_on: str = "response"):
        self.tokens, self.offsets = split.tokens, np.asarray(split.offsets[first:end + 1], dtype=np.int64)
        self.mask = split.mask if loss_on == "response" else None
        self.sequence_length, self.batch_size = sequence_length, batch_size
        self.layout = layout(self.offsets, sequence_length)
        order = np.arange(self.layout.num_windows)
        if shuffle:
            order = np.random.default_rng([seed, stage, epoch]).permutation(order)
        self.order = order
        self.truncated = int(np.sum(np.diff(self.offsets) > sequence_length + 1))
        self._plan_batches(len(order), batch_size, max_batches, start_batch)

    def _make_batch(self, b: int):
        T, lay = self.sequence_length, self.layout
        arrays = _empty(self.batch_size, T)
        for row, w in enumerate(self.order[b * self.batch_size:(b + 1) * self.batch_size]):
            at = 0
            for seg, i in enumerate(lay.members[lay.bounds[w]:lay.bounds[w + 1]], 1):
                s, n = self.offsets[i], lay.positions[i] + 1
                ids = np.asarray(self.tokens[s:s + n])
                mask = np.ones(n, np.float32) if self.mask is None else np.asarray(self.mask[s:s + n], np.float32)
                at = _place(arrays, row, at, seg, ids, mask)
        # Rows that only fill the batch are all padding: segment 0, no weight (each padding
        # position attends only to itself, kgpt2.model.packed_attention.segment_mask).
        return {k: arrays[k] for k in INPUTS}, arrays["targets"], arrays["weights"]

    @property
    def num_windows(self) -> int:
        return len(self.order)

    def take_rows(self, rows, batch_size: int) -> PackedBatches:
        """These windows only (positions in this epoch's order), in batches of `batch_size` (one process's rows)."""
        local = copy.copy(self)
        local.order, local.batch_size = self.order[rows], batch_size
        return local

    def _used(self) -> np.ndarray:
        return self.order[self.start_batch * self.batch_size:self.total_batches * self.batch_size]

    def target_tokens(self) -> int:
        """Target positions holding a real token in the batches this source yields."""
        return int(self.layout.fill[self._used()].sum())

    def scored_tokens(self) -> int:
        """The sum of the sample weights of every batch, without building them."""
        lay = self.layout
        examples = np.concatenate([lay.members[lay.bounds[w]:lay.bounds[w + 1]] for w in self._used()] or [[]])
        examples = examples.astype(np.int64)
        if self.mask is None:
            return int(lay.positions[examples].sum())
        return int(sum(int(np.sum(self.mask[s + 1:s + 1 + n]))
                       for s, n in zip(self.offsets[examples], lay.positions[examples])))

    def padding_fraction(self) -> float:
        """Share of the target positions in this epoch's batches that hold no token."""
        slots = len(self) * self.batch_size * self.sequence_length
        return 1.0 - self.target_tokens() / slots if slots else 0.0

    def batch_paddings(self) -> np.ndarray:
        """The padding share of each batch this source yields."""
        fill = np.zeros(self.total_batches * self.batch_size)
        used = self.order[:self.total_batches * self.batch_size]
        fill[:len(used)] = self.layout.fill[used]
        per_batch = fill.reshape(self.total_batches, self.batch_size).sum(axis=1)
        return (1.0 - per_batch / (self.batch_size * self.sequence_length))[self.start_batch:]

    def examples_per_window(self) -> float:
        return len(self.layout.members) / max(1, self.layout.num_windows)
