"""The demo's checkpoints are those whose weights verify, as `kgpt2 generate`, serve and export take them: a
checkpoint whose optimizer.npz alone is damaged was left out of the pickers, so the demo's "latest" was an older
checkpoint than `kgpt2 generate` used on the same run. One whose weights are damaged is still left out, named in one
warning line for the demo's life (it was named again at every refresh, several times over)."""

from __future__ import annotations

import shutil

import pytest
from test_faults import damage

from kgpt2.training.checkpoints import CheckpointManager

pytestmark = pytest.mark.backend_neutral  # which checkpoints are listed and what is said: no backend difference


@pytest.fixture
def root(tmp_path, tiny_run):
    shutil.copytree(tiny_run, tmp_path / "root" / "tiny")
    return tmp_path / "root"


def _picked(demo) -> tuple[list[str], str]:
    """(the ids the right picker lists, its value) after a refresh of the page."""
    _, _, _, ckpt_b, *_ = demo.refresh("tiny", "base", "tiny", demo.latest, None)
    return [i for _, i in ckpt_b.choices], ckpt_b.value


def test_a_damaged_optimizer_state_leaves_the_checkpoint_in_the_demo(root, caplog, flip_bytes):
    from kgpt2.demo import Demo
    from kgpt2.serving.checkpoint_names import resolve

    newest = CheckpointManager(root / "tiny").list()[-1]
    flip_bytes(newest.path / "optimizer.npz")  # same size, other bytes
    with caplog.at_level("WARNING", logger="kgpt2"):
        demo = Demo(root, "tiny", batching=False)
        ids, value = _picked(demo)
    assert demo.latest == newest.id == resolve(root / "tiny")[0], "the checkpoint `kgpt2 generate` uses"
    assert ids[-1] == newest.id and value == newest.id
    assert demo.pool.resolve("tiny", "latest")[1] == newest.id
    assert demo.run_changed("tiny", side="b")[0].value == newest.id
    assert "is damaged" not in caplog.text, "its weights are whole: nothing is passed over"


@pytest.mark.parametrize("how, why", [("checksum", "weights.npz does not match its checksum"),
                                      ("state", "state.json is missing or unreadable")])
def test_damaged_weights_are_left_out_and_named_once(root, caplog, how, why):
    from kgpt2.demo import Demo

    newest, older = CheckpointManager(root / "tiny").list()[-2:][::-1]
    damage(newest.path, how)
    with caplog.at_level("WARNING", logger="kgpt2"):
        demo = Demo(root, "tiny", batching=False)
        for _ in range(3):
            ids, value = _picked(demo)
        demo.run_changed("tiny", side="a")
        assert demo.pool.resolve("tiny", "latest")[1] == older.id
    assert demo.latest == older.id and value == older.id
    assert newest.id not in ids and older.id in ids
    lines = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert lines == [f"checkpoint '{newest.path}' is damaged ({why}); it is skipped and left as it is"], lines
