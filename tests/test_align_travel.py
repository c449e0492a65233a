"""An align run travels like a training run: copied elsewhere, alone or with its data, it opens from any folder.

Before: config.json kept `align.data` as typed (relative to the folder align ran in) and the preset in the run
align started from, so `kgpt2 evaluate` of a copied align run could not find either; a refusal after the run's
lock was taken left an empty run folder holding `.lock`.
"""

import json
import shutil
from pathlib import Path

import pytest

from kgpt2.errors import UserError

pytestmark = pytest.mark.backend

PREFS = "preferences/llms-from-scratch-instruction-data-with-preference.json"


def _prefs(path: Path, shared_data: Path, n: int = 64) -> Path:
    """Short raw prompts from the real pairs (the tiny model's window is 32 tokens)."""
    records = json.loads((shared_data / PREFS).read_text())[:n]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": r["instruction"][:60] + "\n", "chosen": r["chosen"],
                                        "rejected": r["rejected"]}) + "\n" for r in records))
    return path


def _align_from(tiny_run, folder: Path, *extra):
    """`kgpt2 align` from `folder`, on `data/prefs.jsonl` as typed there, starting from `tiny_run`."""
    from kgpt2.align import align
    from kgpt2.config import load_config

    cfg = load_config(None, [f"align.init_run={tiny_run}", "checkpoints_root=runs", "run=aligned",
                             'align.data=["data/prefs.jsonl"]', "align.steps=4", "align.heldout_fraction=0.25",
                             "train.batch_size=4", "train.checkpoint_every=4", *extra])
    return align(cfg, verbose=0)


def test_an_align_run_copied_alone_or_with_its_data_opens_from_another_folder(tmp_path, shared_data, tiny_run,
                                                                               monkeypatch):
    from kgpt2.evaluate import evaluate_alignment
    from kgpt2.run import Run, load_model

    work = tmp_path / "work"
    _prefs(work / "data" / "prefs.jsonl", shared_data)
    monkeypatch.chdir(work)
    _align_from(tiny_run, work)
    stored = json.loads((work / "runs" / "aligned" / "config.json").read_text())
    assert stored["align"]["data"] == ["../../data/prefs.jsonl"], stored["align"]
    assert stored["model"]["preset"] == "preset" and (work / "runs" / "aligned" / "preset").is_dir()

    alone = tmp_path / "drive" / "aligned"  # only the align run, copied; its data and start run stay where they were
    shutil.copytree(work / "runs" / "aligned", alone)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = Run(alone)
    cfg = run.config()
    assert cfg.align.data == [str(work / "data" / "prefs.jsonl")] and Path(cfg.model.preset) == alone / "preset"
    load_model(alone)
    rows = evaluate_alignment(run, cfg, ["base", run.checkpoints().latest().id], save=False)
    assert [r["model"] for r in rows] == ["base", "ckpt-4"]

    again = json.loads(json.dumps(stored))  # align.data given as an absolute path is stored relative too
    from kgpt2.run_config import write_run_config

    again["align"]["data"] = [str(work / "data" / "prefs.jsonl")]
    write_run_config(tmp_path / "abs" / "config.json", {**again, "checkpoints_root": str(tmp_path), "run": "abs"})
    assert json.loads((tmp_path / "abs" / "config.json").read_text())["align"]["data"] == ["../work/data/prefs.jsonl"]

    moved = tmp_path / "moved"  # the whole work folder, then the original gone (and the run it started from)
    shutil.copytree(work, moved)
    shutil.rmtree(work)
    cfg = Run(moved / "runs" / "aligned").config()
    assert cfg.align.data == [str(moved / "data" / "prefs.jsonl")]
    again = evaluate_alignment(Run(moved / "runs" / "aligned"), cfg, ["base", "ckpt-4"], save=False)
    assert again == rows


def test_an_align_refused_after_its_lock_leaves_no_run_folder(tmp_path, tiny_run, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="preference file 'data/prefs.jsonl' does not exist"):
        _align_from(tiny_run, tmp_path)
    assert not (tmp_path / "runs").exists()  # kgpt2 made runs/aligned for its lock, and took it away again

    (tmp_path / "runs" / "aligned").mkdir(parents=True)  # a folder the user made is left as it was
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="does not exist"):
        _align_from(tiny_run, tmp_path)
    assert sorted(p.name for p in (tmp_path / "runs").rglob("*")) == ["aligned", "notes.txt"]


def test_align_init_run_given_a_checkpoint_or_a_folder_of_runs_names_its_own_keys(tmp_path, tiny_run, monkeypatch):
    """The advice named `--run` and `--checkpoint`, which align does not take."""
    monkeypatch.chdir(tmp_path)
    ckpt = sorted(tiny_run.glob("ckpt-*"))[-1]
    with pytest.raises(UserError) as e:
        _align_from(ckpt, tmp_path)
    assert str(e.value) == (f"align.init_run '{ckpt}' is a folder inside run '{tiny_run}'; align.init_run takes the "
                            f"run's folder, and align.init_checkpoint={ckpt.name} picks this checkpoint")
    with pytest.raises(UserError) as e:
        _align_from(tiny_run.parent, tmp_path)
    assert f"align.init_run takes one of them, e.g. align.init_run='{tiny_run}'" in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_align_into_a_training_runs_folder_says_what_it_is(tmp_path, shared_data, tiny_run, monkeypatch):
    """`kgpt2 align run=<a training run>` listed a dozen align fields as changed ("loss: None -> 'dpo'; beta: ...")."""
    copy = tmp_path / "runs" / "aligned"
    shutil.copytree(tiny_run, copy)
    monkeypatch.chdir(tmp_path)
    _prefs(tmp_path / "data" / "prefs.jsonl", shared_data)
    before = sorted(p.name for p in copy.iterdir())
    with pytest.raises(UserError) as e:
        _align_from(tiny_run, tmp_path)
    assert str(e.value) == ("run 'runs/aligned' is a training run, not an align run: align into a new run name "
                            "(run=NEW_NAME), starting from it with align.init_run=runs/aligned")
    assert sorted(p.name for p in copy.iterdir()) == before
