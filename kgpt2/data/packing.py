"""Packing instruction / chat examples into full windows, each example kept apart.

Examples (token ids + loss mask, as kgpt2.data.examples encodes them) are
placed greedily, in order, into windows of `sequence_length + 1` tokens
(first fit: an example goes into the first window with room, so the order
and the windows are deterministic). Each window carries, per position:
the input token, its segment (1, 2, ... per example; 0 = padding), its
position within its example (restarting at 0), the target (the next token of
the same example) and a loss weight (1 only on response targets: no loss on
prompts, padding, or across an example boundary). An example longer than a
window is cut, as with one example per window. kgpt2.packed_attention runs
the model over these.

    >>> import numpy as np
    >>> from kgpt2.data.packing import pack_examples
    >>> ex = [(np.array([5, 6, 7]), np.array([0, 1, 1])), (np.array([8, 9]), np.array([0, 1]))]
    >>> w = pack_examples(ex, sequence_length=5)
    >>> w["token_ids"].tolist(), w["segment_ids"].tolist(), w["positions"].tolist()
    ([[5, 6, 8, 0, 0]], [[1, 1, 2, 0, 0]], [[0, 1, 0, 0, 0]])
    >>> w["targets"].tolist(), w["weights"].tolist()
    ([[6, 7, 9, 0, 0]], [[1.0, 1.0, 1.0, 0.0, 0.0]])
"""

from __future__ import annotations

import numpy as np


def first_fit(lengths, capacity: int) -> list[list[int]]:
    """Example indices per bin, first fit in order (lengths cut at capacity)."""
    bins, room = [], []
    for i, n in enumerate(lengths):
        n = min(int(n), capacity)
        for b, free in enumerate(room):
            if free >= n:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return bins


def pack_examples(examples, sequence_length: int) -> dict:
    """[W, T] arrays token_ids, segment_ids, positions, targets, weights of packed windows.

    `examples`: (ids, mask) per example, ids ending in end-of-text, mask 1 on
    the tokens to learn. An example of n tokens takes n - 1 input positions
    (its last token is only a target), so targets never cross examples.
    """
    T = sequence_length
    lengths = [min(len(ids), T + 1) - 1 for ids, _ in examples]  # input positions per example
    bins = first_fit(lengths, T)
    arrays = {k: np.zeros((len(bins), T), "int32") for k in ("token_ids", "segment_ids", "positions", "targets")}
    weights = np.zeros((len(bins), T), "float32")
    for w, members in enumerate(bins):
        at = 0
        for seg, i in enumerate(members, 1):
            ids, mask = (np.asarray(a)[:T + 1] for a in examples[i])
            n = len(ids) - 1
            sl = slice(at, at + n)
            arrays["token_ids"][w, sl], arrays["targets"][w, sl] = ids[:-1], ids[1:]
            arrays["segment_ids"][w, sl], arrays["positions"][w, sl] = seg, np.arange(n)
            weights[w, sl] = mask[1:]
            at += n
    return dict(arrays, weights=weights)


def padding_fraction(windows: dict) -> float:
    """Share of the window positions that hold no example."""
    return float(np.mean(windows["segment_ids"] == 0))
