"""The run folder's parts without a model: atomic I/O, Run's names and checkpoint ids, the cursor."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from kgpt2.errors import UserError
from kgpt2.io import atomic_write_text, new_folder, publish_folder, save_figure
from kgpt2.run import Run
from kgpt2.training.cursor import Cursor
from kgpt2.training.periodic_eval import PeriodicEval, read_evals

pytestmark = pytest.mark.backend_neutral  # a run folder's files (atomic writes, logs)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    atomic_write_text(path, "old")

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["config.json"]


def test_publish_folder_replaces_the_old_one_whole(tmp_path):
    final = tmp_path / "ckpt-5"
    final.mkdir()
    (final / "stale.npz").write_text("old")
    tmp = tmp_path / ".ckpt-5.tmp-x"
    tmp.mkdir()
    (tmp / "weights.npz").write_text("new")
    publish_folder(tmp, final)
    assert sorted(os.listdir(final)) == ["weights.npz"] and sorted(os.listdir(tmp_path)) == ["ckpt-5"]


def test_new_folder_appears_whole_on_an_absent_or_empty_out(tmp_path):
    for out in (tmp_path / "absent" / "export", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        with new_folder(out, "export") as tmp:
            assert tmp.parent == out.parent and not (out / "a").exists()
            (tmp / "a").write_text("1")
        assert (out / "a").read_text() == "1" and not [n for n in os.listdir(out.parent) if n.startswith(".")]


@pytest.mark.parametrize("before", ["absent", "empty"])
def test_a_failure_mid_build_leaves_out_as_it_was(tmp_path, before):
    out = tmp_path / "export"
    if before == "empty":
        out.mkdir()
    with pytest.raises(RuntimeError, match="mid-build"):
        with new_folder(out, "export") as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("mid-build")
    assert os.listdir(tmp_path) == ([] if before == "absent" else ["export"])  # no temp folder left
    assert before == "absent" or os.listdir(out) == []
    with pytest.raises(UserError, match=r"^could not write the export to '.*export': the disk is full; "
                                        r"free some space or use a bigger disk$"):
        with new_folder(out, "export") as tmp:
            raise OSError(28, "No space left on device")  # what a full disk raises mid-write
    assert os.listdir(tmp_path) == ([] if before == "absent" else ["export"])


def test_new_folder_refuses_a_used_out_in_one_sentence(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(UserError) as refused:
        with new_folder(out, "import"):
            raise AssertionError("the build must not start")
    assert str(refused.value) == f"import target '{out}' already exists and is not empty; choose a new directory"
    (tmp_path / "file").write_text("keep")
    with pytest.raises(UserError, match=f"import target '{tmp_path / 'file'}' is a file; choose a new directory"):
        with new_folder(tmp_path / "file", "import"):
            pass
    assert (tmp_path / "file").read_text() == "keep"
    late = tmp_path / "late"  # filled by someone else while the folder was built
    with pytest.raises(UserError, match=f"import target '{late}' already exists"):
        with new_folder(late, "import") as tmp:
            (tmp / "ours").write_text("x")
            late.mkdir()
            (late / "theirs").write_text("keep")
    assert os.listdir(late) == ["theirs"] and sorted(os.listdir(tmp_path)) == ["file", "late", "mine"]
    assert (out / "notes.txt").read_text() == "keep"


def test_written_files_and_folders_get_the_umasks_mode_not_mkstemps(tmp_path):
    """An export or a run shared with others must be readable by them: mkstemp/mkdtemp make 0600/0700."""
    from kgpt2 import io

    old = os.umask(0o022)
    io._umask.cache_clear()  # read once per process: whatever an earlier test saw
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with new_folder(tmp_path / "export", "export") as building:
            atomic_write_text(building / "config.json", "{}")
            (building / "model.safetensors").touch(mode=0o600)  # as safetensors' save_file leaves it
        os.chmod(tmp_path / "a.json", 0o640)  # a mode the user chose is kept when the file is replaced
        atomic_write_text(tmp_path / "a.json", "[]")
    finally:
        os.umask(old)
        io._umask.cache_clear()
    mode = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert mode == {"a.json": 0o640, "export": 0o755, "export/config.json": 0o644, "export/model.safetensors": 0o644}


def test_save_figure_writes_a_png_and_no_temp(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "loss.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.listdir(tmp_path) == ["loss.png"]


def _toy_model():
    """What the checkpoint store reads of a model: trainable variables and seed states."""
    return SimpleNamespace(trainable_variables=[keras.Variable(np.arange(4.0), name="w")],
                           non_trainable_variables=[])


def test_retention_spares_the_best_checkpoint_the_run_names(tmp_path):
    run = Run(tmp_path / "run")
    store = run.checkpoints(keep_last=1)
    model = _toy_model()
    store.save(model, None, {"step": 1, "stage": 0})
    run.write_best({"id": "ckpt-1", "step": 1, "val_loss": 1.0})
    for step in (2, 3):
        store.save(model, None, {"step": step, "stage": 0})
    assert [c.id for c in store.list()] == ["ckpt-1", "ckpt-3"]  # ckpt-2 went, the best stayed
    assert run.checkpoint("best").id == "ckpt-1" and run.checkpoint("latest").id == "ckpt-3"
    assert run.checkpoint_ids() == ["base", "ckpt-1", "ckpt-3"]


def test_best_without_one_is_one_sentence(tmp_path):
    run = Run(tmp_path)
    run.checkpoints().save(_toy_model(), None, {"step": 1, "stage": 0})
    with pytest.raises(UserError, match="has no best checkpoint; train it with train.keep_best = true"):
        run.checkpoint("best")
    with pytest.raises(UserError, match="is not a kgpt2 run directory"):
        run.config()


def test_periodic_eval_saves_on_improvement_only_with_the_step_it_is_given(tmp_path):
    losses = iter([3.0, 2.0, 2.5, 1.0])  # validation at steps 0, 5, 10, 15
    saved = []

    def evaluate(split):
        return {"loss": next(losses) if split == "validation" else 9.0}

    def save_at(step):
        saved.append(step)
        return SimpleNamespace(id=f"ckpt-{step}")

    pe = PeriodicEval(tmp_path, every=5, step=0, evaluate=evaluate, keep_best=True)
    pe.before_training(0)
    for step in (3, 5, 8, 10, 15):
        pe.after_steps(step, save=lambda s=step: save_at(s))
    assert saved == [5, 15]
    assert json.loads(Run(tmp_path).best_path.read_text())["id"] == "ckpt-15"
    assert read_evals(tmp_path)["best"].tolist() == [0, 1, 0, 1]


def test_cursor_crosses_epochs_and_stages():
    c = Cursor(stage=2, epoch=1, batch=3, step=40)
    assert c.position(per_epoch=10) == 13
    assert c.advanced(9, per_epoch=10, first=13) == Cursor(stage=2, epoch=2, batch=2, step=49)
    assert Cursor.from_state({"stage": 1, "epoch": 0, "batch": 0, "step": 7, "stage_end": True}) == Cursor(1, 0, 0, 7)


def test_a_runs_config_json_given_as_run_names_the_folder(tmp_path, capsys, monkeypatch):
    """`--run RUN/config.json` (a natural slip) is told to name the folder, not that there is no config.json."""
    from kgpt2.cli import main
    from kgpt2.demo import launch

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("hi")
    monkeypatch.chdir(tmp_path)
    want = "'run/config.json' is a file; --run takes the run's folder ('run')"
    with pytest.raises(UserError) as e:
        Run("run/config.json").config()
    assert str(e.value) == want
    for argv in (["generate", "--run", "run/config.json", "--prompt", "x"], ["train", "--run", "run/config.json"],
                 ["evaluate", "--run", "run/config.json"]):
        assert main(argv) == 2 and capsys.readouterr().err == f"kgpt2: error: {want}\n", argv
    with pytest.raises(UserError, match="^'notes.txt' is a file; --run takes the run's folder$"):
        launch("notes.txt", port=0)


def test_a_folder_in_a_run_a_folder_of_runs_or_shards_given_as_run_say_what_to_pass(tmp_path, capsys, monkeypatch):
    """`--run RUN/ckpt-75`, `--run checkpoints` or `--run SHARDS` all said "is not a kgpt2 run directory"."""
    from kgpt2.cli import main
    from kgpt2.config import Config, save_config

    for name in ("b", "a"):
        (tmp_path / "runs" / name / "ckpt-75").mkdir(parents=True)
        save_config(Config(), tmp_path / "runs" / name / "config.json")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    cases = {
        ("generate", "--run", "runs/a/ckpt-75", "--prompt", "x"):
            "'runs/a/ckpt-75' is a folder inside run 'runs/a'; --run takes the run's folder, and --checkpoint ckpt-75 "
            "picks this checkpoint",
        ("train", "--run", "runs/a/ckpt-75"):
            "'runs/a/ckpt-75' is a folder inside run 'runs/a'; --run takes the run's folder, and "
            "train.init_from=runs/a:ckpt-75 starts a new run from this checkpoint",
        ("evaluate", "--run", "runs"): "'runs' holds runs (a, b); --run takes one of them, e.g. --run 'runs/a'",
        ("demo", "--run", "./runs"): "'runs' holds runs (a, b); --run takes one of them, e.g. --run 'runs/a'; or "
                                     "--checkpoints-root 'runs' to list them all",
        ("export", "--run", "shards", "--to", "hf", "out"):
            "'shards' is a shard set (what `kgpt2 prepare` writes), not a run; --run takes a run's folder (train one "
            "on these shards with data.shards = \"shards\")",
    }
    for argv, want in cases.items():
        assert main(list(argv)) == 2 and capsys.readouterr().err == f"kgpt2: error: {want}\n", argv


def test_a_run_takes_the_preset_it_is_given_and_never_a_run_as_one(tmp_path, tiny_preset, tiny_run, make_tiny_config):
    """A start killed after the preset's copy, run again with another preset, trained on the outside folder (the
    run no longer travelled: its config pointed outside, its preset/ held the old model); `model.preset=<a run>`
    copied every checkpoint of that run in, then failed to load it as a preset."""
    import shutil

    from kgpt2.run import same_files

    other = tmp_path / "other-preset"
    shutil.copytree(tiny_preset, other)
    (other / "metadata.json").write_text((other / "metadata.json").read_text() + "\n")  # another preset's files
    run = Run(tmp_path / "r")
    first = run.adopt(make_tiny_config(tmp_path, tiny_preset, "shards", "run=r"))
    assert first.model.preset == str(run.preset_dir) and same_files(run.preset_dir, tiny_preset)
    second = run.adopt(make_tiny_config(tmp_path, other, "shards", "run=r"))  # no checkpoint yet: replaced
    assert second.model.preset == str(run.preset_dir) and same_files(run.preset_dir, other)
    (run.path / "ckpt-5").mkdir()  # checkpoints trained on this copy: it stays, and the resume check names the change
    assert run.adopt(make_tiny_config(tmp_path, tiny_preset, "shards", "run=r")).model.preset == str(tiny_preset)
    assert same_files(run.preset_dir, other)
    fresh = Run(tmp_path / "fresh")
    with pytest.raises(UserError, match=r"^model\.preset '.*' is a kgpt2 run, not a preset: to start from its weights, "
                                        r"give train\.init_from="):
        fresh.adopt(make_tiny_config(tmp_path, tiny_run, "shards", "run=fresh"))
    assert not fresh.preset_dir.exists()


def test_a_second_trainer_on_a_new_from_scratch_run_is_told_the_run_is_in_use(tmp_path, pydoc_shards, pydoc_tokenizer,
                                                                              pydoc_tokenizer_dir, tiny_overrides,
                                                                              kgpt2_cli):
    """Two `kgpt2 train` of one new from-scratch run started together: the second made the run's preset before
    taking the lock, and was told "preset target 'runs/r/preset' already exists", not that the run is in use."""
    run = Run(tmp_path / "r")
    with run.lock():  # the first trainer, between its lock and its first checkpoint
        r = kgpt2_cli("train", *tiny_overrides, "model.preset=scratch", f"model.tokenizer={pydoc_tokenizer_dir}",
                      f"model.vocabulary_size={pydoc_tokenizer.vocab_size}", f"data.shards={pydoc_shards}",
                      f"checkpoints_root={tmp_path}", "run=r")
    assert r.returncode == 2 and "is in use by another kgpt2 process" in r.stderr, r.stderr
    assert not run.preset_dir.exists()
