"""Windows and batches: every token predicted once, seeded order, shifted epochs."""

import numpy as np
import pytest

from kgpt2.data.batches import EpochBatches, WindowBatches

pytestmark = pytest.mark.backend_neutral  # NumPy batching of shards, no Keras


def _targets(source):
    seen = []
    for i in range(len(source)):
        _, y, w = source[i]
        seen.extend(y[w > 0].tolist())
    return seen


def test_every_token_is_a_target_exactly_once():
    tokens = np.arange(1, 101, dtype=np.uint16)
    src = WindowBatches(tokens, 0, 100, sequence_length=8, batch_size=4, seed=3)
    assert sorted(_targets(src)) == list(range(2, 101))


def test_order_is_a_pure_function_of_seed_stage_epoch():
    tokens = np.arange(1000, dtype=np.uint16)
    a = WindowBatches(tokens, 0, 1000, sequence_length=16, batch_size=4, seed=1, stage=2, epoch=5)
    b = WindowBatches(tokens, 0, 1000, sequence_length=16, batch_size=4, seed=1, stage=2, epoch=5, start_batch=3)
    np.testing.assert_array_equal(a[3][1], b[0][1])  # resume at batch 3 sees batch 3
    c = WindowBatches(tokens, 0, 1000, sequence_length=16, batch_size=4, seed=1, stage=2, epoch=6)
    assert not np.array_equal(a[0][1], c[0][1])


def test_shifted_windows_keep_the_count_and_move_each_epoch():
    tokens = np.arange(1000, dtype=np.uint16)
    make = lambda e: WindowBatches(tokens, 0, 1000, sequence_length=16, batch_size=4, seed=0, epoch=e,
                                   shuffle=False, shift=True)
    plain = WindowBatches(tokens, 0, 1000, sequence_length=16, batch_size=4, seed=0, shuffle=False)
    starts = {int(make(e)[0][0]["token_ids"][0, 0]) for e in range(6)}
    assert len(starts) > 1 and all(0 <= s < 16 for s in starts)
    assert all(len(make(e)) == len(plain) for e in range(6))
    assert make(2)[0][1].tolist() == make(2)[0][1].tolist()  # deterministic


def test_epoch_batches_cross_epochs_in_order():
    tokens = np.arange(200, dtype=np.uint16)
    make = lambda e: WindowBatches(tokens, 0, 200, sequence_length=8, batch_size=4, seed=0, epoch=e)
    per = len(make(0))
    both = EpochBatches(make, per, per - 1, per + 2)
    assert len(both) == 3
    np.testing.assert_array_equal(both[0][1], make(0)[per - 1][1])
    np.testing.assert_array_equal(both[2][1], make(1)[1][1])


def test_filler_rows_are_weightless_and_never_fully_masked():
    tokens = np.arange(20, dtype=np.uint16)
    x, _, w = WindowBatches(tokens, 0, 20, sequence_length=8, batch_size=8, seed=0, shuffle=False)[0]
    assert w[3:].sum() == 0 and x["padding_mask"][:, 0].all()


@pytest.mark.parametrize("offsets", [None, [0, 7, 30, 31, 58, 90]])
def test_scored_tokens_is_the_sum_of_the_sample_weights(offsets):
    tokens = np.arange(90, dtype=np.uint16)
    mask = (np.arange(90) % 3 != 0).astype(np.uint8)  # a response-only style loss mask
    for m in (None, mask):
        src = WindowBatches(tokens, 0, 90, sequence_length=8, batch_size=4, seed=0, mask=m, offsets=offsets,
                            start_batch=1)
        weights = sum(float(src[i][2].sum()) for i in range(len(src)))
        assert src.scored_tokens() == weights
        assert (src.scored_tokens() < src.target_tokens()) == (m is not None)


def test_a_stage_too_small_for_one_batch_is_told_the_batch_size_it_fills(pydoc_shards, make_tiny_config, tmp_path,
                                                                          caplog):
    """train.batch_size 1,000 on 10 articles trained one step of 90% padding without a word."""
    import math

    from kgpt2.data.shards import ShardSet
    from kgpt2.data.stage_plan import plan_stages
    from kgpt2.training.training_data import describe_padding, stage_batches

    split = ShardSet(pydoc_shards).split("train")
    stage = plan_stages([3, "rest"], split.num_articles)[0]
    lo, hi = split.token_range(stage.first, stage.end)
    for batch_size, warned in ((1000, True), (2, False)):
        cfg = make_tiny_config(tmp_path, "unused", pydoc_shards, f"train.batch_size={batch_size}")
        caplog.clear()
        with caplog.at_level("WARNING", logger="kgpt2"):
            describe_padding(cfg, split, stage, stage_batches(cfg, split, stage, 0))
        assert ("of its batches' positions are padding" in caplog.text) == warned, caplog.text
        if warned:
            windows = math.ceil((hi - lo - 1) / cfg.data.sequence_length)  # every token but the first: a target
            assert f"train.batch_size={windows} (or fewer)" in caplog.text, caplog.text
