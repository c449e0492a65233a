"""The demo's model picker names every checkpoint truly and once: its id, its step and its stage.

A finished one-stage run trained on with more epochs ends its stage a second time; both stage-end checkpoints
were labelled "end of stage 1" (as testers saw "end of stage 4" twice on a run continued with more stages).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.backend_neutral  # labels read from checkpoint states; training runs on both elsewhere


@pytest.fixture(scope="module")
def continued_run(tmp_path_factory, tiny_preset, pydoc_shards, tiny_overrides):
    """A one-stage run (1 epoch), then trained on to 2 epochs: its stage ends twice."""
    from kgpt2.config import load_config
    from kgpt2.train import train

    root = tmp_path_factory.mktemp("labels")
    common = tiny_overrides + [f"checkpoints_root={root}", f"model.preset={tiny_preset}",
                               f"data.shards={pydoc_shards}", "run=one-stage", "train.stages=[5]"]
    first = train(load_config(None, common), verbose=0)
    second = train(load_config(None, common + ["train.epochs=2"]), verbose=0)
    assert first.checkpoint != second.checkpoint
    return root, first.checkpoint, second.checkpoint


def test_each_checkpoint_is_labelled_once_with_its_true_stage_and_step(continued_run):
    from kgpt2.serving.model_pool import ModelPool
    from kgpt2.training.checkpoints import CheckpointManager

    root, first, second = continued_run
    choices = ModelPool(root).checkpoints("one-stage")
    labels = [label for label, _ in choices]
    assert len(set(labels)) == len(labels), labels
    steps = {c.id: c.step for c in CheckpointManager(root / "one-stage").list()}
    for label, ckpt in choices[1:]:
        assert label.startswith(f"{ckpt} · step {steps[ckpt]} · "), label  # the step, then where in the plan
    by_id = dict((c, label) for label, c in choices)
    assert by_id[first] == f"{first} · step {steps[first]} · end of stage 1 at 1 epoch (trained on after)"
    assert by_id[second] == f"{second} · step {steps[second]} · end of stage 1 at 2 epochs · latest"
    assert sum("end of stage 1" in label and "trained on after" not in label for label in labels) == 1


def test_a_plain_run_keeps_short_labels(tiny_run):
    from kgpt2.serving.model_pool import ModelPool

    labels = [label for label, _ in ModelPool(tiny_run.parent).checkpoints(tiny_run.name)]
    assert labels[0] == "base (the untrained preset)"
    assert labels[-1].endswith(" · end of stage 2 · latest") and " · step " in labels[-1]
    assert not any("epoch" in label or "trained on" in label for label in labels)


def test_stage_n_names_the_newest_end_of_that_stage(continued_run):
    """`--checkpoint stage-1` on a stage trained on after it ended gave its first end, the one the picker calls
    "trained on after"; the stage's end is now its newest, and the list of names says stage-1 once."""
    from kgpt2.errors import UserError
    from kgpt2.training.checkpoints import CheckpointManager

    root, first, second = continued_run
    manager = CheckpointManager(root / "one-stage")
    assert manager.get("stage-1").id == second
    assert manager.get(first).id == first  # the earlier end stays reachable by its id
    with pytest.raises(UserError) as refused:
        manager.get("stage-9")
    assert str(refused.value).count("stage-1") == 1, refused.value
