"""Next-token sampling traced into compiled programs, with per-row settings and seeds.

Every setting is a tensor with one value per row (request), so one compiled
program serves greedy, top-k, top-p and temperature requests side by side;
a row's draw depends only on its own seed and position, never on which
other requests share the batch.

    >>> import numpy as np
    >>> logits = np.array([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]], "float32")
    >>> rows = sample(logits, greedy=np.array([True, True]), temperature=np.ones(2, "float32"),
    ...               top_k=np.full(2, 3, "int32"), top_p=np.ones(2, "float32"),
    ...               seed=np.zeros(2, "int32"), position=np.zeros(2, "int32"))
    >>> [int(t) for t in rows]
    [1, 0]
"""

from __future__ import annotations

NEG = -1.0e9  # logit of an excluded token: exp() underflows to exactly 0


# KerasHub's samplers hold temperature/p/k as Python attributes and take k as a
# static shape (`ops.top_k(probs, k)`), so every new setting is a new program;
# their nucleus also sorts the whole vocabulary (50,257 entries) every token,
# which on a small CPU costs about as much as GPT-2's forward step. Here the
# settings are tensors and the top-k / top-p cut-offs are found by bisection.

def _largest_threshold(bits, enough, steps: int = 31):
    """The largest t in [0, max(bits)] with `enough(t)`; `enough(0)` is assumed.

    `bits` are float32 probabilities viewed as int32: for values >= 0 that view
    keeps their order, so 31 halvings of [0, 2^31) land on an exact value.
    """
    from keras import ops

    lo = ops.zeros(ops.shape(bits)[:1], "int32")
    hi = ops.max(bits, axis=-1)

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo + 1) // 2
        ok = enough(mid[:, None])
        return ops.where(ok, mid, lo), ops.where(ok, hi, mid - 1)

    lo, _ = ops.fori_loop(0, steps, halve, (lo, hi))
    return lo


def _per_row(value, dtype):
    from keras import ops

    return ops.reshape(ops.cast(value, dtype), (-1, 1))  # a scalar or [B] -> [1 or B, 1]


def filter_logits(logits, temperature, top_k, top_p):
    """Logits / temperature with everything outside the top-k and the nucleus set to -1e9.

    Keeps the `top_k` most likely tokens and, of those, the smallest set whose
    probability reaches `top_p` (both cuts as in KerasHub's TopPSampler(p, k));
    tokens tied at a cut-off are all kept. `top_k >= vocabulary` and
    `top_p = 1` switch the cuts off. Works on a batch `[B, vocabulary]`; the
    settings are scalars or one value per row.
    """
    from keras import ops

    logits = ops.cast(logits, "float32")
    # The row's largest logit taken out before dividing: a tiny temperature (1e-10) turned the top logits into
    # ~1e11 and the compiled softmax dropped the top token; shifted, the top is exactly 0 for any temperature.
    scaled = (logits - ops.max(logits, axis=-1, keepdims=True)) / _per_row(temperature, "float32")
    probs = ops.softmax(scaled, axis=-1)
    bits = ops.view(probs, "int32")
    top_k, top_p = _per_row(top_k, "int32")[:, 0], _per_row(top_p, "float32")[:, 0]
    k_cut = _largest_threshold(bits, lambda t: ops.sum(ops.cast(bits >= t, "int32"), axis=-1) >= top_k)
    p_cut = _largest_threshold(bits, lambda t: ops.sum(ops.where(bits >= t, probs, 0.0), axis=-1) >= top_p)
    p_cut = ops.where(top_p >= 1.0, 0, p_cut)  # float32 sums of the tail can round away: p = 1 keeps all
    keep = bits >= ops.maximum(k_cut, p_cut)[:, None]
    return ops.where(keep, scaled, NEG)


def _mix(x):
    """A 32-bit integer hash (Wellons' lowbias32) in int32 ops; XLA wraps on overflow."""
    from keras import ops

    def shift(v, k):  # a logical right shift on int32 (the ops' shift is arithmetic)
        return ops.bitwise_and(ops.right_shift(v, k), (1 << (32 - k)) - 1)

    x = ops.bitwise_xor(x, shift(x, 16))
    x = x * 0x7FEB352D
    x = ops.bitwise_xor(x, shift(x, 15))
    x = x * (0x846CA68B - (1 << 32))
    return ops.bitwise_xor(x, shift(x, 16))


def uniform_noise(seed, position, vocabulary: int):
    """Uniform (0, 1) values `[B, vocabulary]`, a pure function of each row's (seed, position).

    Written by hand because `keras.random` takes one seed per call: rows of a
    batch could not have their own seeds, and a request's draws would change
    with the requests beside it.
    """
    from keras import ops

    row = _mix(ops.bitwise_xor(_mix(ops.cast(seed, "int32")), ops.cast(position, "int32")))
    x = _mix(ops.bitwise_xor(row[:, None], ops.arange(vocabulary, dtype="int32")[None, :]))
    top24 = ops.bitwise_and(ops.right_shift(x, 8), (1 << 24) - 1)
    return (ops.cast(top24, "float32") + 0.5) / float(1 << 24)


def row_seed(seed: int) -> int:
    """A request's seed as the 31-bit value a row samples with: itself when it fits, else a hash of all its bits
    (OpenAI's seeds are 64-bit; masking kept the low 31 bits, so 0, 2**31 and 2**32 drew the same text).

        >>> row_seed(7), len({row_seed(s) for s in (0, 2**31, 2**32, -2**31, 2**40)})
        (7, 5)
    """
    if 0 <= seed < 1 << 31:
        return seed
    import hashlib

    digest = hashlib.blake2b(seed.to_bytes(16, "little", signed=True), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def sample(logits, greedy, temperature, top_k, top_p, seed, position, branch: str = "cond"):
    """One next token per row: argmax where `greedy`, else a draw from `filter_logits`.

    The draw is the Gumbel-max trick on the row's own noise: argmax(logits + G)
    with G = -log(-log(U)) samples softmax(logits) exactly. `branch="cond"`
    skips the top-k / top-p bisection when every row is greedy (a conditional:
    XLA's GPU runtime waits for the device to decide it); `"both"` always
    computes the draw and selects per row (no conditional, for loops on the device).
    """
    from keras import ops

    logits = ops.cast(logits, "float32")
    argmax = ops.cast(ops.argmax(logits, axis=-1), "int32")

    def draw():
        kept = filter_logits(logits, temperature, top_k, top_p)
        noise = uniform_noise(seed, position, ops.shape(logits)[-1])
        drawn = ops.cast(ops.argmax(kept - ops.log(-ops.log(noise)), axis=-1), "int32")
        return ops.where(ops.cast(greedy, "bool"), argmax, drawn)

    if branch == "both":
        return draw()
    return ops.cond(ops.all(ops.cast(greedy, "bool")), lambda: argmax, draw)


MAX_LOGPROBS = 5  # top alternatives a request may ask for (OpenAI's legacy completions cap)


def token_scores(logits, tokens):
    """(log-probability of `tokens` [...], top-`MAX_LOGPROBS` log-probabilities [..., K], their ids [..., K]).

    The model's own distribution: float32 log-softmax of the raw logits, before
    temperature, top-k or top-p (as OpenAI reports them). Works on `[B, V]` or `[B, T, V]`.
    """
    from keras import ops

    logprobs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    chosen = ops.take_along_axis(logprobs, ops.expand_dims(ops.cast(tokens, "int32"), -1), axis=-1)[..., 0]
    values, ids = ops.top_k(logprobs, MAX_LOGPROBS)
    return chosen, values, ops.cast(ids, "int32")
