"""`train.dropout_rng = "rbg"`: dropout masks from XLA's RngBitGenerator, other numbers, same training guarantees.

Oracles: the lowered step (the RngBitGenerator op is there, threefry is
gone), Keras' own threefry run of the same plan (it trains differently, so
the option reaches `kgpt2 train`), and an uninterrupted run (a run resumed
from its stage-1 checkpoint ends with the same weights, bit for bit).
"""

import shutil

import keras
import numpy as np
import pytest
from test_faults import PLAN, _rolled_back, assert_same_weights, final_weights
from test_performance_options import SHAPE, _batch

import kgpt2  # noqa: F401  (picks the Keras backend)
from kgpt2.config import load_config
from kgpt2.model.models import build_causal_lm

pytestmark = [pytest.mark.backend, pytest.mark.filterwarnings("ignore::UserWarning")]


def _model(rng: str, dropout="0.2"):
    keras.utils.set_random_seed(0)
    return build_causal_lm(load_config(None, SHAPE + [f"model.dropout={dropout}", f"train.dropout_rng={rng}"]))


def _lowered_forward(model) -> str:
    """StableHLO of a jitted training-mode forward (seed states in and out, as Keras' train step has them)."""
    import jax

    x, _ = _batch()
    trainable = [v.value for v in model.trainable_variables]
    other = [v.value for v in model.non_trainable_variables]
    step = jax.jit(lambda t, o, x: model.stateless_call(t, o, x, training=True))
    return step.lower(trainable, other, x).as_text()


def test_rbg_draws_every_dropout_mask_with_rng_bit_generator():
    if keras.backend.backend() != "jax":
        pytest.skip("a JAX lowering")
    threefry, rbg = _lowered_forward(_model("threefry")), _lowered_forward(_model("rbg"))
    assert "rng_bit_generator" not in threefry and "threefry" in threefry.lower()
    assert "rng_bit_generator" in rbg and "threefry" not in rbg.lower()  # every mask: none is left on threefry
    model = _model("rbg")
    x, _ = _batch()
    a, b = np.asarray(model(x, training=True)), np.asarray(model(x, training=True))
    assert np.abs(a - b).max() > 1e-4  # a new mask each call (the layers' seed generators advance)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(_model("threefry")(x)))  # inference: no dropout


def test_rbg_dropout_keeps_the_rate_and_the_scale():
    if keras.backend.backend() != "jax":
        pytest.skip("rbg is JAX's")
    from kgpt2 import compat

    layer = keras.layers.Dropout(0.25, seed=3)
    assert compat.rbg_dropout(keras.Sequential([keras.Input((20_000,)), layer])) == 1
    out = np.asarray(layer(np.ones((2, 20_000), "float32"), training=True))
    assert set(np.unique(out)) <= {0.0, np.float32(1 / 0.75)}
    assert (out == 0).mean() == pytest.approx(0.25, abs=0.01)
    np.testing.assert_array_equal(np.asarray(layer(np.ones((1, 5), "float32"))), np.ones((1, 5)))


def test_rbg_off_jax_is_a_warning_and_changes_nothing(caplog):
    model = _model("rbg")  # build_causal_lm applies it (or warns)
    from kgpt2 import compat

    if keras.backend.backend() == "jax":
        assert compat.rbg_dropout(model.backbone) > 0
        return
    with caplog.at_level("WARNING", logger="kgpt2"):
        assert compat.rbg_dropout(model.backbone) == 0
    assert 'train.dropout_rng = "rbg" applies on the JAX backend only' in caplog.text


@pytest.mark.slow  # about 60 s on CPU: three short runs
def test_rbg_dropout_trains_differently_and_resumes_exactly(tmp_path, tiny_preset, pydoc_shards, make_tiny_config):
    if keras.backend.backend() != "jax":
        pytest.skip("rbg is JAX's (elsewhere: the test above)")
    from kgpt2.train import train

    plan = [*PLAN, "model.dropout=0.2"]
    cfg = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=a", *plan, "train.dropout_rng=rbg")
    train(cfg, verbose=0)
    shutil.copytree(cfg.run_dir, tmp_path / "b")
    _rolled_back(tmp_path / "b")  # back to the stage-1 end: stage 2 again, its masks from the checkpointed seeds
    train(make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=b", *plan, "train.dropout_rng=rbg"), verbose=0)
    rbg = final_weights(cfg.run_dir)
    assert_same_weights(final_weights(tmp_path / "b"), rbg)

    train(make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=c", *plan), verbose=0)  # threefry
    threefry = final_weights(tmp_path / "c")
    assert max(float(np.abs(rbg[k] - threefry[k]).max()) for k in rbg) > 1e-6  # other masks, other weights
