"""Staged training survives anything: SIGKILL mid-step or mid-save, a full disk.

The kill-and-resume test trains a 4-stage plan on real PubMed abstracts,
kills the trainer with SIGKILL three times (once the moment a checkpoint
save starts), checks after each kill that every checkpoint on disk is
complete, resumes, and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from kgpt2.errors import UserError
from kgpt2.training.checkpoints import CheckpointManager

pytestmark = pytest.mark.backend

PLAN = 'train.stages=[4, 6, 8, "rest"]'


@pytest.fixture(scope="module")
def pubmed_shards(tmp_path_factory, shared_data, pydoc_tokenizer):
    from kgpt2.data.shards import prepare

    out = tmp_path_factory.mktemp("pubmed") / "shards"
    # memsum keeps its own train/val/test files; abstracts keep the run short.
    prepare(shared_data / "pubmed" / "memsum_pubmed_300", out, pydoc_tokenizer, contents="abstract", progress=False)
    return out


def _args(overrides, root, preset, shards, run):
    return overrides + [f"checkpoints_root={root}", f"model.preset={preset}", f"data.shards={shards}",
                             f"run={run}", PLAN, "train.checkpoint_every=7", "train.keep_last=2", "train.epochs=1"]


def _assert_checkpoints_complete(run_dir: Path):
    for d in run_dir.glob("ckpt-*"):
        state = json.loads((d / "state.json").read_text())  # parses: the dir is complete
        assert state["step"] == int(d.name[5:])
        with np.load(d / "weights.npz") as w, np.load(d / "optimizer.npz") as o:
            assert len(w.files) > 0 and len(o.files) > 0


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_matches_uninterrupted(tmp_path, tiny_preset, pubmed_shards, tiny_overrides,
                                                            start_cli, kill_and_resume, latest_weights):
    ref = start_cli("train", _args(tiny_overrides, tmp_path, tiny_preset, pubmed_shards, "reference"))
    assert ref.wait(timeout=600) == 0, ref.stderr.read()

    run_dir = tmp_path / "killed"
    args = _args(tiny_overrides, tmp_path, tiny_preset, pubmed_shards, "killed")
    rng = random.Random(0)
    waits = [rng.uniform(0.0, 3.0), None, rng.uniform(0.0, 3.0)]  # None: the moment a save has begun
    kills = kill_and_resume("train", args, run_dir, waits, check=lambda: _assert_checkpoints_complete(run_dir))
    assert kills >= 2, "the run finished before it could be interrupted; make it longer"
    _assert_checkpoints_complete(run_dir)

    ref_step, ref_w = latest_weights(tmp_path / "reference")
    step, w = latest_weights(run_dir)
    assert step == ref_step
    for k in ref_w:
        np.testing.assert_allclose(w[k], ref_w[k], rtol=1e-5, atol=1e-6, err_msg=k)
    ref_stages = json.loads((tmp_path / "reference" / "stages.json").read_text())
    stages = json.loads((run_dir / "stages.json").read_text())
    assert [s["stage"] for s in stages] == [1, 2, 3, 4]
    for a, b in zip(stages, ref_stages):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    # the per-step log has each step exactly once after the resumes
    steps = sorted(int(line.split(",")[0]) for line in (run_dir / "logs" / "steps.csv").read_text().splitlines()[1:])
    assert steps == list(range(1, step + 1))


def test_resume_refuses_incompatible_config(tmp_path, tiny_preset, pydoc_shards, make_tiny_config):
    from kgpt2.train import train

    cfg = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=r", "train.stages=[3]")
    train(cfg, verbose=0)
    for override, named in [("lora.enabled=true", r"lora\.enabled: False -> True"),
                            ("data.sequence_length=16", r"data\.sequence_length: \d+ -> 16")]:
        changed = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=r", "train.stages=[3]", override)
        with pytest.raises(UserError, match=f"config changed.*{named}"):
            train(changed, verbose=0)
    changed = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=r", "train.stages=[3]", "train.batch_size=3")
    with pytest.raises(UserError, match=r"training plan changed \(train\.batch_size: \d+ -> 3\)"):
        train(changed, verbose=0)
    with pytest.raises(UserError, match="no checkpoint to resume"):
        train(make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=fresh", "train.stages=[3]"),
              verbose=0, require_checkpoint=True)


@pytest.mark.parametrize("err, words", [(errno.ENOSPC, "No space left"), (errno.EROFS, "Read-only file system")])
def test_disk_full_or_read_only_keeps_last_checkpoint(tmp_path, tiny_preset, pydoc_shards, monkeypatch, err, words, make_tiny_config):
    import kgpt2.training.checkpoints as ck
    from kgpt2.train import train

    real_save = ck.save_arrays
    calls = {"n": 0}

    def failing_save(path, variables):
        calls["n"] += 1
        if calls["n"] > 2:  # the first checkpoint (weights + optimizer) succeeds
            raise OSError(err, os.strerror(err), str(path))
        real_save(path, variables)

    monkeypatch.setattr(ck, "save_arrays", failing_save)
    cfg = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=full", "train.stages=[3, 3]")
    with pytest.raises(UserError, match=f"{words}.*last good checkpoint ckpt-\\d+ is intact"):
        train(cfg, verbose=0)
    ckpts = CheckpointManager(cfg.run_dir).list()
    assert len(ckpts) == 1 and not list(cfg.run_dir.glob(".ckpt-*"))
    _assert_checkpoints_complete(cfg.run_dir)
    monkeypatch.setattr(ck, "save_arrays", real_save)
    result = train(cfg, verbose=0)  # the disk has room again: it resumes and finishes
    assert len(result.stages) == 2


def test_training_in_mixed_precision_leaves_the_global_policy(tmp_path, tiny_preset, pydoc_shards, make_tiny_config):
    import keras

    from kgpt2.train import train
    from kgpt2.training.checkpoints import CheckpointManager

    keras.config.set_dtype_policy("float32")
    cfg = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=bf16", "train.stages=[3]",
                      "train.precision=mixed_bfloat16", "train.eval_batches=1")
    result = train(cfg, verbose=0)
    assert result.global_step > 0 and np.isfinite(result.stages[-1]["loss"])
    assert keras.config.dtype_policy().name == "float32"  # the caller's policy, untouched
    weights = np.load(CheckpointManager(cfg.run_dir).latest().path / "weights.npz")
    assert all(weights[k].dtype == np.float32 for k in weights.files)  # mixed precision keeps fp32 variables


def test_a_log_gets_a_progress_line_while_a_stage_trains(tmp_path, tiny_preset, pydoc_shards, make_tiny_config,
                                                          monkeypatch, caplog):
    """Under nohup or `| tee` (Keras' verbose=2) a stage said nothing until it ended: an hour for a long stage."""
    import re

    from kgpt2.train import train
    from kgpt2.training import progress_lines

    monkeypatch.setattr(progress_lines, "EVERY_S", 0.0)  # a line after every step here; a minute in use
    cfg = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=p", "train.stages=[4, 6]", "train.eval_batches=1")
    with caplog.at_level("INFO", logger="kgpt2"):
        result = train(cfg, verbose=2)
    lines = [r.getMessage() for r in caplog.records if " to the end of the plan" in r.getMessage()]
    pattern = (r"stage-(\d): step (\d+) of (\d+) \(\d+\.\d%\), loss (\d+\.\d{4}), accuracy 0\.\d{4}, [\d,]+ tokens/s, "
               r"about (< 1 min|\d+ min|\d+ h \d+ min) to the end of the plan")
    parsed = [re.fullmatch(pattern, line) for line in lines]
    assert lines and all(parsed), lines
    steps = [int(m[2]) for m in parsed]
    # Keras runs async-safe callbacks on worker threads: the lines may come out of step order.
    assert len(set(steps)) == len(steps) and {int(m[3]) for m in parsed} == {result.global_step}
    assert {m[1] for m in parsed} == {"1", "2"}  # both stages report
    from kgpt2.training.run_logs import read_steps

    logged = dict(zip(read_steps(cfg.run_dir)["step"], read_steps(cfg.run_dir)["loss"]))
    assert all(abs(logged[s] - float(m[4])) < 1e-4 for s, m in zip(steps, parsed))  # the step log's own loss


def test_a_missing_gpu_is_refused_before_the_run_folder_is_made(tmp_path, tiny_preset, pydoc_shards, tiny_overrides,
                                                                monkeypatch, capsys):
    """A Colab CPU runtime and `--device gpu:0` left a run folder holding only a copy of the preset."""
    import kgpt2.training.devices
    from kgpt2.cli import main

    monkeypatch.setattr(kgpt2.training.devices, "list_gpus", lambda: [])
    argv = ["train", "--device", "gpu:0", f"model.preset={tiny_preset}", f"data.shards={pydoc_shards}",
            f"checkpoints_root={tmp_path}", "run=r", *tiny_overrides]
    assert main(argv) == 2
    assert "device 'gpu:0' was asked for" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_train_epochs_below_what_the_stage_in_place_trained_is_refused(tmp_path):
    """`kgpt2 train --run R train.epochs=2` on a run whose stage trained 6 was accepted, written into config.json
    ("trained nothing"), and became the epochs of the next stage the run was given."""
    from kgpt2.training.continuation import check_epochs

    finished = {"stage": 3, "epoch": 0, "batch": 0, "step": 450, "stage_end": True, "epochs": 6}
    with pytest.raises(UserError, match=r"^train\.epochs is 2, but run 'r' trained stage 3 for 6 epochs already: "
                                        r"nothing would train; give train\.epochs of 6 \(fewer apply to a new stage: "
                                        r"'train\.stages=\[\"rest\"\]' train\.epochs=2\)$"):
        check_epochs(2, finished, 0, 3, "r")
    with pytest.raises(UserError, match=r"give train\.epochs above 6 \(train\.epochs=7: one more pass\)$"):
        check_epochs(5, {**finished, "stage_offset": 2}, 2, 1, "r")  # a continued run: a plan of one stage
    mid = {"stage": 2, "epoch": 5, "batch": 11, "step": 425, "stage_end": False, "epochs": 6}
    with pytest.raises(UserError, match=r"^train\.epochs is 5, but run 'r' is in epoch 6 of stage 3 already: nothing "
                                        r"would train; give train\.epochs of 6 or more$"):
        check_epochs(5, mid, 0, 3, "r")
    # train.epochs = 0 is "as many as train.max_steps needs" (the shakespeare recipes): a run of those stopped in
    # its second epoch was refused ("train.epochs is 0, but run 'r' is in epoch 2 ... already") and never resumed
    for epochs, state, offset, length in ((0, mid, 0, 3), (0, finished, 0, 1),
                                          (6, finished, 0, 3), (9, finished, 0, 3), (6, mid, 0, 3),
                                          (2, finished, 3, 1),  # a new stage after the finished ones: its own epochs
                                          (2, {**finished, "stage": 1}, 0, 3)):  # later stages may be shorter
        check_epochs(epochs, state, offset, length, "r")


def test_the_dry_run_of_a_from_scratch_run_approves_what_the_real_run_trains(tmp_path, pydoc_shards, pydoc_tokenizer,
                                                                             pydoc_tokenizer_dir, tiny_overrides):
    """`kgpt2 train --config C run=R train.epochs=2 --dry-run` on an existing from-scratch run said "cannot resume
    run R: the config changed what its checkpoints hold (model.preset: 'preset' -> 'scratch' ...)"; the same
    command without --dry-run trained."""
    from kgpt2.config import load_config
    from kgpt2.train import train
    from kgpt2.training.train_inputs import dry_run_plan

    config = lambda *o: load_config(None, [*tiny_overrides, "model.preset=scratch", f"data.shards={pydoc_shards}",  # noqa: E731
                                           f"model.vocabulary_size={pydoc_tokenizer.vocab_size}", "run=r",
                                           f"model.tokenizer={pydoc_tokenizer_dir}",
                                           f"checkpoints_root={tmp_path}", "train.stages=[3]", *o])
    step = train(config(), verbose=0).global_step
    before = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert dry_run_plan(config("train.epochs=2"))[0]  # approved, and nothing written
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == before
    assert train(config("train.epochs=2"), verbose=0).global_step == 2 * step


def test_a_run_whose_shards_moved_changed_or_max_steps_fell_says_what_to_do(tmp_path, tiny_preset, pydoc_shards,
                                                                          pydoc_tokenizer, make_tiny_config, caplog):
    """A finished run: its shards moved (the sentence said "run `kgpt2 prepare` first" about a folder that is
    gone), prepared again in place (it trained on the new articles without a word), a train.max_steps below its
    step (accepted, written into config.json, and from then on nothing trained); `--dry-run` approved a
    batch size or fewer epochs than the run trained, which the real run refuses."""
    import shutil

    from kgpt2.data.shards import prepare
    from kgpt2.train import train
    from kgpt2.training.train_inputs import dry_run_plan

    shards = tmp_path / "shards"
    shutil.copytree(pydoc_shards, shards)
    config = lambda *o: make_tiny_config(tmp_path, tiny_preset, shards, "run=r", "train.stages=[3]", "train.epochs=2",
                                              *o)  # noqa: E731
    step = train(config(), verbose=0).global_step
    saved = (tmp_path / "r" / "config.json").read_text()
    with pytest.raises(UserError, match=rf"^train\.max_steps is 1, but run '.*r' is at step {step} already: nothing "
                                        rf"would train; give a train\.max_steps above {step} \(or 0: the whole plan\)$"):
        train(config("train.max_steps=1"), verbose=0)
    for refused, sentence in (("train.max_steps=1", "train.max_steps is 1"), ("train.batch_size=3", "batch"),
                              ("train.epochs=1", "train.epochs is 1, but run")):  # the dry run missed this one
        with pytest.raises(UserError, match=sentence):
            dry_run_plan(config(refused))
    assert (tmp_path / "r" / "config.json").read_text() == saved
    shards.rename(tmp_path / "moved")
    with pytest.raises(UserError, match=r"the shards run '.*r' trains on, '.*shards', are not there any more \(moved "
                                        r"or deleted\): give their new place, kgpt2 train --run .*r data\.shards=NEW_PLACE"):
        train(config(), verbose=0)
    prepare("pydoc", shards, pydoc_tokenizer, fractions=(0.5, 0.25, 0.25), progress=False)  # other train articles
    with caplog.at_level("WARNING", logger="kgpt2"):
        assert train(config(), verbose=0).global_step > step
    assert "data.shards holds other articles than run" in caplog.text


def test_the_first_plan_again_after_the_run_went_on_is_refused_not_trained_twice(tmp_path, tiny_preset, pydoc_shards,
                                                                                pydoc_tokenizer, make_tiny_config):
    """A notebook run again from its top cell after the run was continued on new shards: the first cell's plan
    on the first shards differed from the run's newest, so it was taken as a new plan and trained those articles
    again as new stages. It is refused, naming what the run did; another plan on them still trains."""
    from kgpt2.data.shards import prepare
    from kgpt2.train import train
    from kgpt2.training.train_inputs import dry_run_plan

    other = tmp_path / "other"
    prepare("pydoc", other, pydoc_tokenizer, fractions=(0.5, 0.25, 0.25), progress=False)  # other train articles
    config = lambda shards, *o: make_tiny_config(tmp_path, tiny_preset, shards, "run=r", "train.epochs=1",  # noqa: E731
                                                 *o)
    first = train(config(pydoc_shards, "train.stages=[3]"), verbose=0)
    went_on = train(config(other, "train.stages=[2]"), verbose=0)
    assert went_on.global_step > first.global_step
    run = tmp_path / "r"
    saved, ckpts = (run / "config.json").read_text(), sorted(p.name for p in run.glob("ckpt-*"))
    sentence = (rf"^run '.*r' trained this plan on these articles already \(train.stages = \[3\]: stages 1-1, to step "
                rf"{first.global_step}\) and has gone on since, to step {went_on.global_step}; .* kgpt2 train --run .*r; ")
    with pytest.raises(UserError, match=sentence):
        train(config(pydoc_shards, "train.stages=[3]"), verbose=0)
    with pytest.raises(UserError, match=sentence):
        dry_run_plan(config(pydoc_shards, "train.stages=[3]"))
    assert (run / "config.json").read_text() == saved and sorted(p.name for p in run.glob("ckpt-*")) == ckpts
    assert train(config(pydoc_shards, "train.stages=[2]"), verbose=0).global_step > went_on.global_step  # on purpose
