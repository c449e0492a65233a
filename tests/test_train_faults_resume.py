"""Resuming and continuing a run after a change of config, and a save stopped half way, as users met them.

- model.dropout changed on a run whose checkpoints were written without dropout (or the other way) was refused
  after the model was built ("missing: seed_generator/0 ..., written by a different model or LoRA setting"), and
  config.json kept the new value, so `kgpt2 train --run RUN` failed the same way from then on;
- a restore that fails leaves config.json as it was;
- `train.init_from` between two from-scratch runs of one config was refused ("holds another model than this
  config (model.hidden_dim: unset -> 32 ...)"), the same command the batch-size refusal proposes;
- Ctrl-C / SIGTERM during a checkpoint's save left its temporary folder behind;
- `train.init_from` checked the optimizer state it does not load: a damaged one sent it to an older checkpoint,
  or stopped it when named (align's start and generate read only the weights).
"""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest

from kgpt2.errors import UserError
from kgpt2.training import checkpoints as checkpoints_module
from kgpt2.training.checkpoints import CheckpointManager

pytestmark = pytest.mark.backend


def _scratch_config(tmp_path, pydoc_shards, pydoc_tokenizer_dir, tiny_overrides, *extra):
    from kgpt2.config import load_config

    return load_config(None, [*tiny_overrides, "model.preset=scratch", f"model.tokenizer={pydoc_tokenizer_dir}",
                              "model.vocabulary_size=0", f"data.shards={pydoc_shards}",
                              f"checkpoints_root={tmp_path}", *extra])


@pytest.mark.parametrize("before, after", [(0.0, 0.1), (0.1, 0.0)])
def test_dropout_changed_on_resume_trains_on(tmp_path, tiny_preset, pydoc_shards, make_tiny_config, before, after):
    from kgpt2.train import train

    first = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=r", "train.stages=[2]",
                             f"model.dropout={before}")
    step = train(first, verbose=0).global_step
    more = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=r", "train.stages=[2, 2]",
                            f"model.dropout={after}")
    result = train(more, verbose=0)
    assert result.global_step > step and result.start_step == step
    saved = json.loads((first.run_dir / "config.json").read_text())
    assert saved["model"]["dropout"] == after


def test_a_restore_that_fails_leaves_config_json_as_it_was(tmp_path, tiny_preset, pydoc_shards, make_tiny_config,
                                                            monkeypatch):
    from kgpt2.train import train

    first = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=r", "train.stages=[2]")
    train(first, verbose=0)
    before = (first.run_dir / "config.json").read_bytes()

    def refuse(*args, **kwargs):
        raise UserError("checkpoint 'x' is damaged")

    monkeypatch.setattr(CheckpointManager, "restore", staticmethod(refuse))
    more = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=r", "train.stages=[2, 2]",
                            "train.learning_rate=0.01")
    with pytest.raises(UserError, match="damaged"):
        train(more, verbose=0)
    assert (first.run_dir / "config.json").read_bytes() == before


def test_init_from_a_scratch_run_into_a_scratch_run_of_the_same_shape(tmp_path, pydoc_shards, pydoc_tokenizer_dir,
                                                                     pydoc_tokenizer, tiny_overrides):
    from kgpt2.train import train
    from kgpt2.training.continuation import init_checkpoint

    config = lambda *o: _scratch_config(tmp_path, pydoc_shards, pydoc_tokenizer_dir, tiny_overrides, *o)  # noqa: E731
    source = train(config("run=a", "train.stages=[2]"), verbose=0)
    same = config("run=b", f"train.init_from={source.run_dir}")
    assert init_checkpoint(same, pydoc_tokenizer).step == source.global_step
    result = train(config("run=b", "train.stages=[2]", "train.batch_size=4", f"train.init_from={source.run_dir}"),
                   verbose=0)
    assert result.global_step > 0
    wider = config("run=c", "model.hidden_dim=64", f"train.init_from={source.run_dir}")
    with pytest.raises(UserError, match=r"train.init_from: run .* holds another model .*model.hidden_dim: 32 -> 64"):
        init_checkpoint(wider, pydoc_tokenizer)


def test_a_save_interrupted_half_way_leaves_no_temporary_folder(tmp_path, monkeypatch):
    def stop(name):
        if name == "mid-checkpoint":
            raise KeyboardInterrupt  # Ctrl-C, or SIGTERM (kgpt2.cli_runner.Terminated)

    monkeypatch.setattr(checkpoints_module, "fault_point", stop)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    store = CheckpointManager(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        store.save(model, None, {"step": 1})
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []
    assert store.list() == [] and np.isfinite(model.get_weights()[0]).all()


def test_a_stage_added_that_does_not_fit_is_refused_not_the_whole_plan_trained_again(tmp_path, tiny_preset,
                                                                                      pydoc_shards, make_tiny_config):
    """[2, 3] trained, then a stage of 10,000 added on a smaller split (the seed project's 10, then 10,000): the
    plan was scaled as a whole, its first stages moved, and all of it trained again from article 0 as stages 3-5."""
    from kgpt2.train import train
    from kgpt2.training.train_inputs import dry_run_plan

    config = lambda plan: make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=r",  # noqa: E731
                                           f"train.stages={plan}")
    train(config("[2, 3]"), verbose=0)
    with pytest.raises(UserError, match=r"trained stages 1-2 .*\(articles 0\.\.4\); \[2, 3, 10000\] does not fit .*"
                                        r"'train\.stages=\[2, 3, \"rest\"\]'"):
        dry_run_plan(config("[2, 3, 10000]"))
    rows, _ = dry_run_plan(config('[2, 3, "rest"]'))  # what fits goes on in place, after article 4
    assert [r["first"] for r in rows] == [0, 2, 5]


def test_init_from_needs_only_the_weights_of_its_checkpoint(tmp_path, tiny_run, tiny_preset, pydoc_shards,
                                                            make_tiny_config, flip_bytes):
    from kgpt2.train import Trainer

    source = shutil.copytree(tiny_run, tmp_path / "source")  # the shared run stays whole
    newest, older = CheckpointManager(source).list()[-2:][::-1]
    flip_bytes(newest.path / "optimizer.npz")
    for init_from in (str(source), f"{source}:{newest.id}"):
        trainer = Trainer(make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=second",
                                           f"train.init_from={init_from}"), verbose=0)
        trainer.setup()
        trainer.lock.release()
        assert trainer.init_from.id == newest.id  # was older.id, or for the named one "is damaged"
    flip_bytes(newest.path / "weights.npz")
    with pytest.raises(UserError, match=f"checkpoint '.*{newest.id}' is damaged .*; choose another "
                                        "train.init_from checkpoint"):
        Trainer(make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=third",
                                 f"train.init_from={source}:{newest.id}"), verbose=0).setup()
    trainer = Trainer(make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=fourth",
                                       f"train.init_from={source}"), verbose=0)
    trainer.setup()
    trainer.lock.release()
    assert trainer.init_from.id == older.id
