"""Settings a resumed or continued run must keep, and what it says when a new plan trains articles again.

`train.init_from` from a run of another tokenizer of the same size; `seed` and `data.shift_windows` changed in
the middle of an epoch (they order its batches); a plan that ends before what the run has trained, and one
placed after the finished stages that trains trained articles again. Resume in general: tests/test_resume.py.
"""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.backend_neutral  # what resume checks and says; the training under it is tested elsewhere


def _args(tiny_overrides, root, preset, shards, *extra):
    return [*tiny_overrides, f"checkpoints_root={root}", f"model.preset={preset}", f"data.shards={shards}", *extra]


def _error(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.startswith("kgpt2: error:")]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def swapped_tokenizer(tmp_path_factory, pydoc_tokenizer):
    """The pydoc BPE with two tokens' ids swapped: the same size, other tokens behind two embedding rows."""
    from kgpt2.model.tokenizer import Tokenizer

    vocabulary = dict(pydoc_tokenizer.vocabulary)
    a, b = [t for t in sorted(vocabulary, key=vocabulary.get) if t != "<|endoftext|>"][300:302]
    vocabulary[a], vocabulary[b] = vocabulary[b], vocabulary[a]
    return Tokenizer(vocabulary, pydoc_tokenizer.merges)


def test_init_from_a_run_of_another_tokenizer_is_refused_naming_both(tmp_path, tiny_run, tiny_preset, small_shards,
                                                                     swapped_tokenizer, pydoc_tokenizer,
                                                                     tiny_overrides, kgpt2_cli):
    """It checked the model's shape only: a run trained with another tokenizer of the same size started silently,
    its embeddings standing for other tokens."""
    from kgpt2.config import load_config
    from kgpt2.data.shards import prepare
    from kgpt2.model.models import load_tokenizer
    from kgpt2.training.continuation import init_checkpoint

    assert swapped_tokenizer.vocab_size == pydoc_tokenizer.vocab_size
    assert swapped_tokenizer.hash != pydoc_tokenizer.hash
    folder = swapped_tokenizer.save(tmp_path / "swapped")
    shards = tmp_path / "swapped-shards"
    prepare(str(small_shards.parent / "corpus"), shards, swapped_tokenizer, progress=False)
    r = kgpt2_cli("train", *_args(tiny_overrides, tmp_path, tiny_preset, shards, "run=b", f"model.tokenizer={folder}",
                                  f"train.init_from={tiny_run}"))
    error = _error(r)
    assert error.startswith(f"kgpt2: error: train.init_from: run '{tiny_run}' was trained with another tokenizer "
                            f"(the tokenizer of model.preset '{tiny_run / 'preset'}', hash {pydoc_tokenizer.hash}) "
                            f"than this config's (model.tokenizer '{folder}', hash {swapped_tokenizer.hash}), so its "
                            "embeddings would stand for other tokens; "), error
    own = tiny_run / "preset" / "assets" / "tokenizer"  # the run's copy of its preset's
    assert error.endswith(f"train with its tokenizer (model.tokenizer={own}) on shards prepared with it, or leave "
                          "train.init_from out"), error
    assert not (tmp_path / "b").exists()
    # what it advises starts
    same = load_config(None, _args(tiny_overrides, tmp_path, tiny_preset, small_shards, "run=c",
                                   f"model.tokenizer={own}", f"train.init_from={tiny_run}"))
    assert init_checkpoint(same, load_tokenizer(same.model)) is not None


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory, tiny_preset, small_shards, tiny_overrides):
    """A finished run of one stage of 2 articles (2 batches), 2 epochs, a checkpoint after every step."""
    from kgpt2.config import load_config
    from kgpt2.train import train

    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, _args(tiny_overrides, root, tiny_preset, small_shards, "run=r", "train.stages=[2]",
                                  "train.epochs=2", "train.checkpoint_every=1", "train.keep_last=10"))
    assert train(cfg, verbose=0).global_step == 4
    return cfg.run_dir


def _stopped_at(run, step: int, tmp_path):
    """A copy of `run` as a kill after its step-`step` checkpoint left it."""
    copy = shutil.copytree(run, tmp_path / f"at-{step}")
    for ckpt in copy.glob("ckpt-*"):
        if int(ckpt.name[5:]) > step:
            shutil.rmtree(ckpt)
    return copy


def test_seed_or_shift_windows_changed_in_the_middle_of_an_epoch_is_refused(tmp_path, two_epochs, kgpt2_cli):
    """They order an epoch's batches: resumed mid-epoch with another one, the rest of the epoch came in another
    order (some windows twice, others never) without a word. At an epoch's start a change is taken."""
    from kgpt2.training.checkpoints import CheckpointManager

    mid = _stopped_at(two_epochs, 3, tmp_path)  # epoch 2, batch 1
    saved = (mid / "config.json").read_text()
    r = kgpt2_cli("train", "--run", mid, "seed=7")
    assert _error(r) == (f"kgpt2: error: cannot change seed of run '{mid}' in the middle of epoch 2 of stage 1 "
                         "(seed 1337 -> 7): it sets which windows an epoch's batches hold and in what order, so the "
                         "rest of the epoch would train some windows twice and others never; resume it with "
                         "seed=1337 to the stage end first, then change it")
    for argv in (["data.shift_windows=true"], ["--dry-run", "seed=7", "data.shift_windows=true"]):
        error = _error(kgpt2_cli("train", "--run", mid, *argv))
        assert "in the middle of epoch 2 of stage 1" in error and "data.shift_windows=false" in error, error
    assert (mid / "config.json").read_text() == saved and CheckpointManager(mid).latest().step == 3
    assert kgpt2_cli("-q", "train", "--run", mid).returncode == 0  # unchanged, it trains on
    edge = _stopped_at(two_epochs, 2, tmp_path)  # epoch 2, batch 0: a whole new permutation
    r = kgpt2_cli("-q", "train", "--run", edge, "seed=7", "data.shift_windows=true")
    assert r.returncode == 0 and CheckpointManager(edge).latest().step == 4, r.stderr
    assert json.loads((edge / "config.json").read_text())["seed"] == 7


def test_seed_changed_where_train_max_steps_cut_an_epoch_is_refused(tmp_path, tiny_preset, small_shards,
                                                                    tiny_overrides, kgpt2_cli):
    """train.epochs = 0 (as many as train.max_steps needs, the shakespeare recipes): the plan ends in the middle of
    an epoch, and a higher train.max_steps trains that epoch on, where another seed would reorder its rest."""
    from kgpt2.training.checkpoints import CheckpointManager

    args = _args(tiny_overrides, tmp_path, tiny_preset, small_shards, "run=m", "train.stages=[2]", "train.epochs=0")
    assert kgpt2_cli("-q", "train", *args, "train.max_steps=3").returncode == 0  # epoch 2, batch 1
    run = tmp_path / "m"
    error = _error(kgpt2_cli("train", "--run", run, "train.max_steps=4", "seed=7"))
    assert error.startswith(f"kgpt2: error: cannot change seed of run '{run}' in the middle of epoch 2 of stage 1 "
                            "(seed 1337 -> 7): "), error
    assert CheckpointManager(run).latest().step == 3


@pytest.fixture(scope="module")
def three_stages(tmp_path_factory, tiny_preset, small_shards, tiny_overrides):
    """`config(plan)` of a run that finished three stages of one article each."""
    from kgpt2.config import load_config
    from kgpt2.train import train

    args = _args(tiny_overrides, tmp_path_factory.mktemp("runs"), tiny_preset, small_shards, "run=s")
    config = lambda plan: load_config(None, [*args, f"train.stages={plan}"])  # noqa: E731
    train(config("[1, 1, 1]"), verbose=0)
    return config


def test_a_plan_ending_before_what_the_run_trained_is_refused(three_stages, kgpt2_cli):
    """[1, 1] after [1, 1, 1]: placed after the finished stages, it trained articles 0..1 again as stages 4-5,
    nothing new (the same plan at the end of stage 2 trains nothing)."""
    from kgpt2.training.checkpoints import CheckpointManager

    run = three_stages("[1, 1, 1]").run_dir
    saved, step = (run / "config.json").read_text(), CheckpointManager(run).latest().step
    for argv in (["train.stages=[1, 1]"], ["--dry-run", "train.stages=[1, 1]"]):
        error = _error(kgpt2_cli("train", "--run", run, *argv))
        assert error.startswith(f"kgpt2: error: run '{run}' has trained articles 0..2 of these shards (train.stages = "
                                "[1, 1, 1]), and train.stages = [1, 1] ends at article 1: it would train nothing new, "
                                "only those again as new stages; to go on as the run stands: kgpt2 train --run "), error
        assert "'train.stages=[\"rest\"]' train.epochs=1" in error and "train.init_from=" in error, error
    assert (run / "config.json").read_text() == saved and CheckpointManager(run).latest().step == step


def test_a_plan_placed_after_the_finished_stages_says_what_it_trains_again(three_stages, caplog):
    """Another plan on the articles trained (boundaries moved, or a second pass) trains them again as new stages,
    as documented, and now says so in one line."""
    from kgpt2.training.train_inputs import dry_run_plan

    run = three_stages("[1, 1, 1]").run_dir
    for plan, said in (('["rest"]', "its stage 4 trains articles 0..2 again"),
                       ("[2, 2]", "its stages 4-5 train articles 0..2 again")):
        caplog.clear()
        with caplog.at_level("WARNING", logger="kgpt2"):
            dry_run_plan(three_stages(plan))
        (line,) = [r.getMessage() for r in caplog.records if "again" in r.getMessage()]
        assert line == (f"train.stages = {plan} runs after the 3 finished stages of run {run}, and {said}, which "
                        "the run has trained already"), line

