"""Evaluation: metrics against hand-computed and numpy references, determinism, the saved table."""

import json
import math

import numpy as np
import pytest

from kgpt2.errors import UserError

pytestmark = pytest.mark.backend


def test_metrics_on_a_model_with_known_logits():
    """A model whose logits are a fixed table row per input token; padding weighted 0."""
    import keras

    from kgpt2.training.metrics import compile_lm, summarise

    # Row t = log-probabilities of the next token after t: 1/2, 1/4, 1/8, 1/8.
    table = np.log(np.array([[0.5, 0.25, 0.125, 0.125],
                             [0.125, 0.5, 0.25, 0.125],
                             [0.125, 0.125, 0.5, 0.25],
                             [0.25, 0.125, 0.125, 0.5]], dtype="float32"))
    model = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(4, 4, trainable=False)])
    model.layers[0].set_weights([table])
    compile_lm(model)
    x = np.array([[0, 1, 2], [3, 0, 1]], dtype="int32")
    y = np.array([[0, 2, 3], [0, 3, 3]], dtype="int32")
    w = np.array([[1, 1, 1], [1, 0, 0]], dtype="float32")  # the second row is mostly padding
    # Counted targets: p(0|0)=1/2 (argmax, right), p(2|1)=1/4, p(3|2)=1/4, p(0|3)=1/4.
    # Losses ln2, 2ln2, 2ln2, 2ln2 -> mean 1.75 ln2; accuracy 1/4. The padded
    # targets (3 after 0: 1/8; 3 after 1: 1/8) would change both if counted.
    logs = model.evaluate(x, y, sample_weight=w, batch_size=2, verbose=0, return_dict=True)
    got = summarise(logs)
    assert got["loss"] == pytest.approx(1.75 * math.log(2), rel=1e-6)
    assert got["accuracy"] == pytest.approx(0.25)
    assert got["perplexity"] == pytest.approx(2 ** 1.75, rel=1e-6)


def _numpy_reference(run_dir, split, checkpoint, max_batches=None):
    """Mean token loss and accuracy from the model's own logits, computed in numpy."""
    from keras import ops

    from kgpt2.data.batches import WindowBatches
    from kgpt2.data.shards import ShardSet
    from kgpt2.run import load_model

    model, _, cfg = load_model(run_dir, checkpoint)
    data = ShardSet(cfg.data.shards).split(split)
    source = WindowBatches(data.tokens, 0, data.num_tokens, sequence_length=cfg.data.sequence_length,
                           batch_size=cfg.train.batch_size, seed=cfg.seed, shuffle=False, max_batches=max_batches)
    loss_sum = right = count = 0.0
    padded = 0
    for i in range(len(source)):
        x, y, w = source[i]
        logits = ops.convert_to_numpy(model(x)).astype("float64")
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        token_loss = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
        loss_sum += (token_loss * w).sum()
        right += ((logits.argmax(-1) == y) * w).sum()
        count += w.sum()
        padded += (w == 0).sum()
    return loss_sum / count, right / count, int(count), int(padded)


def test_evaluate_matches_numpy_on_the_models_logits(tiny_run):
    from kgpt2.evaluate import evaluate_run

    (row,) = evaluate_run(tiny_run, "latest", split="test", save=False)
    loss, accuracy, tokens, padded = _numpy_reference(tiny_run, "test", "latest")
    assert padded > 0  # the last window and the last batch are partly padding
    assert row["tokens"] == tokens
    assert row["loss"] == pytest.approx(loss, rel=1e-5)
    assert row["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert row["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)


def test_evaluate_is_deterministic_and_saves_the_table(tiny_run):
    from kgpt2.evaluate import evaluate_run
    from kgpt2.evaluation_table import format_table

    first = evaluate_run(tiny_run, "all", split="validation", compare_base=True, max_batches=2)
    again = evaluate_run(tiny_run, "all", split="validation", compare_base=True, max_batches=2)
    assert first == again  # same checkpoints, same split: identical numbers
    assert [r["model"] for r in first][0] == "base" and len(first) == 3
    assert [r.get("stage") for r in first[1:]] == [1, 2]
    assert first[-1]["loss"] < first[0]["loss"]  # training helped on held-out text
    assert all(r["tokens"] == first[0]["tokens"] > 0 for r in first)
    saved = json.loads((tiny_run / "evaluation-validation.json").read_text())
    assert saved == first
    assert (tiny_run / "evaluation-validation.png").stat().st_size > 1000
    assert (tiny_run / "evaluation-validation.csv").read_text().startswith("model,")
    table = format_table(first)
    assert "perplexity" in table and "base" in table


def test_evaluate_picks_checkpoints_by_list(tiny_run):
    from kgpt2.evaluate import select_checkpoints

    ids = select_checkpoints(tiny_run, "all")
    assert select_checkpoints(tiny_run, f"{ids[0]}, base") == [ids[0], "base"]
    assert select_checkpoints(tiny_run, f"{ids[0]},stage-1,{ids[0]}") == [ids[0]]  # one checkpoint, scored once
    with pytest.raises(UserError, match="has no checkpoint 'ckpt-999'"):
        select_checkpoints(tiny_run, "ckpt-999")


def test_a_second_evaluation_adds_its_rows_to_the_saved_table(tiny_run, tmp_path):
    """`evaluate --checkpoint base` after `--checkpoint all` replaced the table with the base row alone."""
    import shutil

    from kgpt2.evaluate import evaluate_run

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for f in run.glob("evaluation-*"):
        f.unlink()
    stages = evaluate_run(run, "all", split="validation", max_batches=2)
    base = evaluate_run(run, "base", split="validation", max_batches=2)
    saved = json.loads((run / "evaluation-validation.json").read_text())
    assert saved == base + stages  # base first, then the checkpoints by step
    csv = [line.split(",") for line in (run / "evaluation-validation.csv").read_text().splitlines()]
    assert [line[0] for line in csv] == ["model", "base"] + [r["model"] for r in stages]
    step = csv[0].index("step")
    assert [line[step] for line in csv[1:]] == [""] + [str(r["step"]) for r in stages]  # not "7.0"
    again = evaluate_run(run, "latest", split="validation", max_batches=2)
    assert json.loads((run / "evaluation-validation.json").read_text()) == base + stages[:-1] + again
    # Scores over other batches do not compare: a call on one batch starts the table anew.
    one = evaluate_run(run, "latest", split="validation", max_batches=1)
    assert json.loads((run / "evaluation-validation.json").read_text()) == one
    # Nor do scores on other shards of the same size (a run continued on new data): the shards' hash tells them apart.
    saved = json.loads((run / "evaluation-validation.json").read_text())
    (run / "evaluation-validation.json").write_text(json.dumps([dict(r, model="base", shards="0" * 16) for r in saved]))
    assert json.loads((run / "evaluation-validation.json").read_text())[0]["tokens"] == one[0]["tokens"]
    assert evaluate_run(run, "latest", split="validation", max_batches=1) == \
        json.loads((run / "evaluation-validation.json").read_text())


def test_two_evaluations_at_once_both_keep_their_rows(tiny_run, tmp_path, monkeypatch):
    """Two `kgpt2 evaluate` on one run at once (a cell per checkpoint): each read the table before the other wrote
    it, so the one that wrote last kept only its own rows. The run's table lock puts one after the other."""
    import shutil
    import threading
    import time

    from kgpt2 import evaluate, evaluation_table

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    base = evaluate.evaluate_run(run, "base", split="validation", max_batches=1, save=False)
    latest = evaluate.evaluate_run(run, "latest", split="validation", max_batches=1, save=False)
    for f in run.glob("evaluation-*"):
        f.unlink()
    merge, both_read = evaluation_table.merge_saved_rows, threading.Barrier(2, timeout=2)

    def slow_merge(saved, rows):  # widens the window between reading the table and writing it
        merged = merge(saved, rows)
        try:
            both_read.wait()  # without the lock both threads get here before either writes
        except threading.BrokenBarrierError:
            pass  # with it, the other thread waits for our write: nobody comes
        time.sleep(0.1)
        return merged

    monkeypatch.setattr(evaluation_table, "merge_saved_rows", slow_merge)
    save = evaluation_table.save_evaluation
    threads = [threading.Thread(target=save, args=(run, rows, lambda r=rows: evaluation_table.save_table(
        run, r, "validation"))) for rows in (base, latest)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    saved = json.loads((run / "evaluation-validation.json").read_text())
    assert sorted(r["model"] for r in saved) == sorted(r["model"] for r in base + latest)


def test_a_disk_full_between_the_json_and_the_csv_keeps_both_old(tiny_run, tmp_path, monkeypatch):
    """The .json was replaced before the .csv's write failed, so the two files of one table disagreed."""
    import errno
    import shutil

    from kgpt2 import io
    from kgpt2.evaluate import evaluate_run
    from kgpt2.evaluation_table import EvaluationNotSaved

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    evaluate_run(run, "latest", split="validation", max_batches=2)
    before = {f.name: f.read_bytes() for f in run.glob("evaluation-validation.*")}
    written = io._fsynced_temp

    def full_on_the_csv(path, data):
        if path.suffix == ".csv":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return written(path, data)

    monkeypatch.setattr(io, "_fsynced_temp", full_on_the_csv)
    with pytest.raises(EvaluationNotSaved, match="the disk is full"):
        evaluate_run(run, "base", split="validation", max_batches=2)
    assert {f.name: f.read_bytes() for f in run.glob("evaluation-validation.*")} == before
    assert not [f.name for f in run.iterdir() if f.name.startswith(".evaluation")]


@pytest.mark.parametrize("removed", ["before its turn", "while it loads"])
def test_a_checkpoint_removed_by_a_running_trainer_is_skipped(tiny_run, tmp_path, monkeypatch, caplog, removed):
    """`kgpt2 evaluate --checkpoint all` beside a `kgpt2 train` that prunes old checkpoints: one listed, then
    removed (as the trainer removes it: renamed aside, deleted) is skipped with a warning; it was a KeyError
    traceback. All removed: one sentence."""
    import shutil

    from kgpt2 import evaluate
    from kgpt2.training import checkpoints

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    first, last = evaluate.select_checkpoints(run, "all")
    if removed == "before its turn":
        real_select = evaluate.select_checkpoints

        def select_then_prune(run_dir, which):
            ids = real_select(run_dir, which)
            checkpoints._remove_folder(run / first)
            return ids

        monkeypatch.setattr(evaluate, "select_checkpoints", select_then_prune)
    else:
        real_restore = checkpoints.CheckpointManager.restore

        def prune_mid_load(model, ckpt, optimizer=None, **checks):
            if ckpt.id == first:
                checkpoints._remove_folder(ckpt.path)
            return real_restore(model, ckpt, optimizer, **checks)

        monkeypatch.setattr(checkpoints.CheckpointManager, "restore", staticmethod(prune_mid_load))
    rows = evaluate.evaluate_run(run, "all", split="validation", max_batches=1, save=False)
    assert [r["model"] for r in rows] == [last]
    assert f"{first} was removed while this evaluation ran" in caplog.text
    checkpoints._remove_folder(run / last)
    monkeypatch.setattr(evaluate, "select_checkpoints", lambda run_dir, which: [last])
    with pytest.raises(UserError, match="chosen to evaluate was removed meanwhile; run it again"):
        evaluate.evaluate_run(run, "all", split="validation", max_batches=1, save=False)


def test_a_run_folder_that_refuses_the_table_still_shows_the_scores(tiny_run, tmp_path, kgpt2_cli):
    """A read-only run (a shared Drive folder) was scored, then the table's write ended in a PermissionError
    traceback and the scores were lost. Now: the table, then one sentence, exit 2, no temporary file left."""
    import shutil

    run = tmp_path / "shared run"
    shutil.copytree(tiny_run, run)
    (run / "evaluation-validation.csv").unlink(missing_ok=True)
    (run / "evaluation-validation.csv").mkdir()  # the write fails as on a read-only run, also for root
    r = kgpt2_cli("evaluate", "--run", str(run), "--split", "validation", "--max-batches", "1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"kgpt2: error: saving the evaluation failed at '{run}': a folder "
                                             "stands where a file is needed; move that folder away, then run the "
                                             "same command again"]
    assert "perplexity" in r.stdout and "saved:" not in r.stdout
    from kgpt2.evaluate import evaluate_run

    assert f"{evaluate_run(run, 'latest', 'validation', max_batches=1, save=False)[0]['loss']:.4f}" in r.stdout
    assert not [p.name for p in run.iterdir() if p.name.startswith(".evaluation")], "a temporary file was left"


def test_evaluate_unknown_split_is_a_user_error(tiny_run):
    from kgpt2.evaluate import evaluate_run

    with pytest.raises(UserError, match="no split 'dev'"):
        evaluate_run(tiny_run, "latest", split="dev", save=False)
    with pytest.raises(UserError, match="max_batches must be at least 1"):  # was Keras' "Must provide at least one structure"
        evaluate_run(tiny_run, "latest", split="validation", max_batches=0, save=False)


def test_building_a_run_model_leaves_the_global_dtype_policy(tmp_path, tiny_preset, pydoc_shards, make_tiny_config):
    import keras

    from kgpt2.run import build_run_model

    cfg = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "train.precision=mixed_bfloat16")
    keras.config.set_dtype_policy("float32")
    model, _ = build_run_model(cfg)
    assert model.dtype_policy.name == "mixed_bfloat16"  # the run's precision...
    assert keras.config.dtype_policy().name == "float32"  # ...without changing the caller's


def test_evaluate_says_how_far_it_is_within_a_model_and_quiet_silences_it(tiny_run, tmp_path, kgpt2_cli,
                                                                           monkeypatch):
    """Keras' evaluate runs at verbose=0, so on 120,000 articles `kgpt2 evaluate` showed nothing for many minutes.
    Now a line names the batch reached (a further tenth of the batches, at most one per SCORING_GAP_S seconds: 0
    here, so this short split shows them), as train's progress lines do; -q silences them; the scores are the same."""
    import re
    import shutil

    from kgpt2.training import progress_lines

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    monkeypatch.setattr(progress_lines, "SCORING_GAP_S", 0.0)
    args = ("evaluate", "--run", str(run), "--split", "train", "--max-batches", "6", "--json")
    loud, quiet = kgpt2_cli(*args), kgpt2_cli("-q", *args)
    assert loud.returncode == quiet.returncode == 0, loud.stderr + quiet.stderr
    (row,) = json.loads(loud.stdout)
    assert json.loads(quiet.stdout) == [row]
    lines = [line for line in loud.stderr.splitlines() if ": batch " in line]
    assert lines, loud.stderr
    done = []
    for line in lines:  # not the first batch (compiling: no pace yet), nor the last (the table follows)
        m = re.fullmatch(rf"kgpt2: scoring {row['model']}: batch (\d) of 6 \(\d+%\), about < 1 min left", line)
        assert m, line
        done.append(int(m.group(1)))
    assert done == sorted(set(done)) and 1 < done[0] and done[-1] < 6
    assert "scoring" not in quiet.stderr
