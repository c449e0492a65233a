"""The demo's start beside a run still training: `warm_up` falls back to the newest checkpoint there now.

`kgpt2 demo --run R` lists R's checkpoints, then builds the base model (seconds on a CPU, longer for a real
preset); `kgpt2 train` of R meanwhile writes new checkpoints and its retention removes old ones, the one the demo
listed as the newest among them.
"""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.backend_neutral  # which checkpoint the page opens on; decoding is tested elsewhere


@pytest.fixture
def training_root(tmp_path, tiny_run):
    shutil.copytree(tiny_run, tmp_path / "root" / "tiny")
    return tmp_path / "root"


def _retention_while_building(monkeypatch, run_dir, gone: str, written: str | None = None):
    """While the demo builds its model: `written` appears (a copy of `gone`, as a new save) and `gone` goes."""
    from kgpt2.serving import model_pool

    build = model_pool.build_run_model

    def build_while_training(cfg, *args, **kwargs):
        if written:
            shutil.copytree(run_dir / gone, run_dir / written)
        shutil.rmtree(run_dir / gone)
        return build(cfg, *args, **kwargs)

    monkeypatch.setattr(model_pool, "build_run_model", build_while_training)


def test_the_listed_newest_goes_while_the_model_builds_and_the_page_opens_on_the_newest_now(training_root,
                                                                                            monkeypatch):
    from kgpt2.demo import Demo

    run_dir = training_root / "tiny"
    demo = Demo(training_root, "tiny", batching=False)
    gone = demo.latest
    step = int(gone.split("-")[1])
    _retention_while_building(monkeypatch, run_dir, gone, written=f"ckpt-{step + 100}")
    demo.warm_up()
    assert demo.latest == f"ckpt-{step + 100}", "the newest checkpoint there now, not an older one"
    assert demo.pool.get("tiny", demo.latest).key == f"tiny/ckpt-{step + 100}"
    page = demo.build()  # the right picker opens on it
    (right,) = [b for b in page.blocks.values() if getattr(b, "elem_id", None) == "ckpt-b"]
    assert right.value == demo.latest


def test_every_checkpoint_gone_while_the_model_builds_opens_on_the_base(training_root, monkeypatch):
    """A run whose folder was emptied of checkpoints (its training started over): the base model answers."""
    from kgpt2.demo import Demo

    run_dir = training_root / "tiny"
    demo = Demo(training_root, "tiny", batching=False)
    for older in [c for _, c in demo.pool.checkpoints("tiny")[1:-1]]:
        shutil.rmtree(run_dir / older)
    _retention_while_building(monkeypatch, run_dir, demo.latest)
    demo.warm_up()
    assert demo.latest == "base"


def test_the_newest_goes_while_its_weights_are_read_and_the_page_opens_on_the_next(training_root, monkeypatch):
    """The retention's removal between the checkpoint's check and the reading of its weights: the demo ended
    with numpy's FileNotFoundError traceback."""
    from kgpt2.demo import Demo
    from kgpt2.training import checkpoints

    demo = Demo(training_root, "tiny", batching=False)
    gone, before = demo.latest, demo.pool.checkpoints("tiny")[-2][1]
    read = checkpoints.load_arrays

    def removed_first(path, *args, **kwargs):
        if path.parent.name == gone and path.parent.exists():
            shutil.rmtree(path.parent)
        return read(path, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "load_arrays", removed_first)
    demo.warm_up()
    assert demo.latest == before


def test_two_checkpoints_go_one_after_the_other_while_the_demo_starts(training_root, monkeypatch, caplog):
    """A run saving often and keeping few: the newest listed goes while the model builds, and the one the demo
    turned to goes while it loads; the demo exited 2 ("run 'tiny' has no checkpoint ...")."""
    from kgpt2.demo import Demo
    from kgpt2.serving import model_pool

    run_dir = training_root / "tiny"
    demo = Demo(training_root, "tiny", batching=False)
    first = demo.latest
    step = int(first.split("-")[1])
    second, third = f"ckpt-{step + 100}", f"ckpt-{step + 200}"
    _retention_while_building(monkeypatch, run_dir, first, written=second)
    restore = model_pool.restore

    def second_goes(model, run, checkpoint, *args, **kwargs):
        if checkpoint == second:
            shutil.copytree(run_dir / second, run_dir / third)
            shutil.rmtree(run_dir / second)
        return restore(model, run, checkpoint, *args, **kwargs)

    monkeypatch.setattr(model_pool, "restore", second_goes)
    with caplog.at_level("INFO", logger="kgpt2"):
        demo.warm_up()
    assert demo.latest == third
    assert f"{first} of run tiny was removed while the demo started" in caplog.text, caplog.text
