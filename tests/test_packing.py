"""Packing: an example's logits packed beside others equal its logits alone; no loss on prompts or padding."""

import json

import numpy as np
import pytest

pytestmark = pytest.mark.backend


@pytest.fixture(scope="module")
def examples(shared_data, pydoc_tokenizer):
    from kgpt2.data.examples import encode_example

    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())
    out = []
    for r in records:
        ids, mask = encode_example(pydoc_tokenizer, r["instruction"][:24] + "\n", r["output"][:24])
        if 4 <= len(ids) <= 20:
            out.append((ids, mask))
        if len(out) == 8:
            break
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_preset, make_tiny_config):
    from kgpt2.model.models import build_causal_lm

    cfg = make_tiny_config(tmp_path_factory.mktemp("runs"), tiny_preset, "", "model.dropout=0.0")
    assert cfg.model.causal_attention  # the fused-kernel wrapper is on: packing must still keep its mask
    return build_causal_lm(cfg)


def test_first_fit_is_the_plain_first_fit():
    """The max-tree first fit places every example where the obvious quadratic loop does."""
    import random

    from kgpt2.data.packing import first_fit

    def plain(lengths, capacity):
        bins, room = [], []
        for i, n in enumerate(lengths):
            n = min(n, capacity)
            b = next((b for b, free in enumerate(room) if free >= n), None)
            if b is None:
                bins.append([]), room.append(capacity)
                b = len(bins) - 1
            bins[b].append(i)
            room[b] -= n
        return bins

    rng = random.Random(0)
    for _ in range(200):
        capacity = rng.choice([5, 16, 64, 256])
        lengths = [rng.randint(0, capacity + 10) for _ in range(rng.randint(0, 150))]
        assert first_fit(lengths, capacity) == plain(lengths, capacity), (lengths, capacity)


def test_packed_windows_hold_each_example_once_with_its_loss_mask(examples):
    from kgpt2.data.packing import pack_examples, padding_fraction

    T = 48
    w = pack_examples(examples, T)
    assert len(w["token_ids"]) < len(examples)  # several examples per window
    seen = 0
    for row in range(len(w["token_ids"])):
        segs = w["segment_ids"][row]
        assert np.all(w["weights"][row][segs == 0] == 0)  # no loss on padding
        for seg in sorted(set(segs.tolist()) - {0}):
            at = np.flatnonzero(segs == seg)
            ids, mask = examples[seen]
            assert np.array_equal(w["token_ids"][row, at], ids[:-1]) and np.array_equal(w["targets"][row, at], ids[1:])
            assert np.array_equal(w["positions"][row, at], np.arange(len(ids) - 1))  # positions restart
            assert np.array_equal(w["weights"][row, at], mask[1:])  # no loss on the prompt
            seen += 1
    assert seen == len(examples)
    padded = sum(T - (len(ids) - 1) for ids, _ in examples) / (T * len(examples))
    assert padding_fraction(w) < padded


def test_an_example_packed_beside_others_has_the_logits_it_has_alone(examples, model):
    from kgpt2.data.packing import pack_examples
    from kgpt2.model.packed_attention import packed_logits

    T = 48
    w = pack_examples(examples, T)
    packed = np.asarray(packed_logits(model, w["token_ids"], w["segment_ids"], w["positions"]), "float64")
    seen = 0
    for row in range(len(w["token_ids"])):
        for seg in sorted(set(w["segment_ids"][row].tolist()) - {0}):
            at = np.flatnonzero(w["segment_ids"][row] == seg)
            ids, _ = examples[seen]
            x = np.zeros((1, T), "int32")
            x[0, :len(ids) - 1] = ids[:-1]
            alone = model.predict({"token_ids": x, "padding_mask": (np.arange(T) < len(ids) - 1)[None]}, verbose=0)
            np.testing.assert_allclose(packed[row, at], np.asarray(alone, "float64")[0, :len(ids) - 1],
                                       rtol=1e-4, atol=1e-4, err_msg=f"example {seen}")
            seen += 1
    assert seen == len(examples)
    # Without the segment mask the second example of a window would see the first: the check can fail.
    row = next(r for r in range(len(w["token_ids"])) if w["segment_ids"][r].max() >= 2)
    leaky = np.asarray(packed_logits(model, w["token_ids"][row:row + 1], np.where(w["segment_ids"][row:row + 1] > 0, 1, 0),
                                     w["positions"][row:row + 1]), "float64")
    at = np.flatnonzero(w["segment_ids"][row] == 2)
    assert not np.allclose(leaky[0, at], packed[row, at], atol=1e-4)


def test_packed_training_loss_equals_the_unpacked_loss(examples, model):
    import keras

    from kgpt2.data.packing import pack_examples
    from kgpt2.model.packed_attention import PackedCausalLM

    T = 48
    w = pack_examples(examples, T)
    lm = PackedCausalLM(model)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    inputs = {k: w[k] for k in ("token_ids", "segment_ids", "positions")}
    packed = float(loss(w["targets"], lm(inputs), sample_weight=w["weights"])) / w["weights"].sum()
    total, count = 0.0, 0.0
    for ex in examples:  # one example per window, the plain model and padding mask
        one = pack_examples([ex], T)
        logits = model({"token_ids": one["token_ids"], "padding_mask": one["segment_ids"] > 0})
        total += float(loss(one["targets"], logits, sample_weight=one["weights"]))
        count += one["weights"].sum()
    assert packed == pytest.approx(total / count, rel=1e-4)
    lm.compile(optimizer=keras.optimizers.SGD(0.0), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = lm.fit(inputs, w["targets"], sample_weight=w["weights"], batch_size=len(w["targets"]), verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_packed_training_with_the_chunked_loss_equals_the_plain_loss(examples, tiny_preset):
    """train.loss_chunk (JAX): the packed model's hidden states go through the chunked cross-entropy."""
    import keras

    from kgpt2.config import load_config
    from kgpt2.data.packing import pack_examples
    from kgpt2.model.models import build_causal_lm
    from kgpt2.model.packed_attention import PackedCausalLM
    from kgpt2.training.metrics import compile_lm

    if keras.backend.backend() != "jax":
        pytest.skip("train.loss_chunk is the JAX training step's")
    w = pack_examples(examples, 48)
    inputs = {k: w[k] for k in ("token_ids", "segment_ids", "positions")}
    after = []
    for chunk in (0, 16):
        cfg = load_config(None, [f"model.preset={tiny_preset}", "data.sequence_length=48", "lora.enabled=false",
                                 "train.precision=float32"])
        lm = PackedCausalLM(build_causal_lm(cfg))
        compile_lm(lm, keras.optimizers.SGD(0.5), token_loss=False, loss_chunk=chunk)
        assert getattr(lm, "_kgpt2_loss_chunk", 0) == chunk
        loss = lm.fit(inputs, w["targets"], sample_weight=w["weights"], batch_size=len(w["targets"]), verbose=0)
        after.append((loss.history["loss"][0], [np.asarray(v) for v in lm.trainable_variables]))
    assert after[0][0] == pytest.approx(after[1][0], rel=1e-5)
    for a, b in zip(after[0][1], after[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
