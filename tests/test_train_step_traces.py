"""A run's train step is traced once.

Keras builds an optimizer lazily; on TensorFlow that happened inside the first traced train step, and
TensorFlow then traced the step twice (it retraces a function that created variables): a tiny run took
11.4 s on CPU instead of ~8, and a second trace of GPT-2's step for every user on TensorFlow. A resumed run was not affected
(its restore builds the optimizer first); kgpt2 now builds it so for a fresh run too
(kgpt2.training.optimizer.build_optimizer).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.backend


def test_a_fresh_run_traces_its_train_step_once_and_fit_creates_no_optimizer_state(
        tmp_path, tiny_preset, pydoc_shards, make_tiny_config):
    from kgpt2.train import Trainer

    cfg = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=once", "train.stages=[5, 10]")
    trainer = Trainer(cfg, verbose=0)
    trainer.setup()
    try:
        with trainer.scope():
            trainer.build()
            optimizer = trainer.fit_model.optimizer
            slots = [id(v) for v in optimizer.variables]
            # two moments per trainable variable, before any step
            assert len(slots) > 2 * len(trainer.model.trainable_variables)
            traces = []
            step = trainer.fit_model.train_step
            # Keras' trainers look train_step up on the model when they trace it: this counts the traces
            trainer.fit_model.train_step = lambda *args: traces.append(1) or step(*args)
            cursor = trainer.resume()
            for stage in trainer.stages:  # two stages: two fits, one traced step
                cursor = trainer.end_stage(stage, trainer.run_stage(stage, cursor))
            assert cursor.step > 1
    finally:
        trainer.lock.release()
    assert len(traces) == 1
    assert [id(v) for v in optimizer.variables] == slots
