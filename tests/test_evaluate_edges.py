"""`kgpt2 evaluate` where users tripped: an empty --checkpoint list, a table replaced by scores on other batches,
damaged checkpoints asked for by name or by `all`, a damaged optimizer state beside intact weights."""

import json

import pytest

from kgpt2.errors import UserError

pytestmark = pytest.mark.backend


@pytest.fixture
def run(unevaluated_run):
    """A copy of the tiny 2-stage run without evaluation tables (the tests damage and rewrite it)."""
    return unevaluated_run


def _stage_ends(run):
    from kgpt2.training.checkpoints import CheckpointManager

    return [c for c in CheckpointManager(run).list() if c.state.get("stage_end")]


def _truncate(path, size=100):
    path.write_bytes(path.read_bytes()[:size])


def test_an_empty_checkpoint_list_says_what_checkpoint_takes(tiny_run, kgpt2_cli):
    """`--checkpoint ,` scored nothing, then said the checkpoints were "removed meanwhile"."""
    from kgpt2.evaluate import select_checkpoints

    r = kgpt2_cli("evaluate", "--run", str(tiny_run), "--checkpoint", ",", "--compare", "base")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "kgpt2: error: --checkpoint ',' names no checkpoint; it takes a checkpoint id (ckpt-N or N), stage-N, "
        "latest, best, all (every stage end plus the latest), base, or a comma list of them"]
    for nothing in ("", " , ", []):  # an empty shell variable evaluated `latest` without a word
        with pytest.raises(UserError, match="names no checkpoint"):
            select_checkpoints(tiny_run, nothing)
    assert select_checkpoints(tiny_run, "base,all") == ["base"] + [c.id for c in _stage_ends(tiny_run)]


def test_rows_on_other_batches_leave_the_table_with_a_line_and_come_back(run, kgpt2_cli, monkeypatch):
    """An evaluation on other batches replaced the saved rows with only "saved:" printed: the numbers were lost.
    Now one line names them and what they and the new ones were scored on; they are kept beside the table
    (written with it, all or nothing) and return when their batches are scored again."""
    import errno

    from kgpt2 import io
    from kgpt2.evaluate import evaluate_run
    from kgpt2.evaluation_table import EvaluationNotSaved

    table, earlier = run / "evaluation-validation.json", run / "evaluation-validation.earlier.json"
    full = evaluate_run(run, "all", split="validation", compare_base=True, max_batches=2)
    last = full[-1]["model"]
    r = kgpt2_cli("evaluate", "--run", run, "--checkpoint", "latest", "--split", "validation", "--max-batches", "1")
    assert r.returncode == 0 and "saved:" in r.stdout
    (one,) = json.loads(table.read_text())
    models = ", ".join(row["model"] for row in full)
    assert r.stderr.strip().splitlines() == [
        f"kgpt2: replaced {len(full)} saved rows of {table} ({models}), scored on {full[0]['tokens']:,} tokens, "
        f"with ones on {one['tokens']:,} tokens: scores on other batches or shards do not compare; the replaced "
        "rows are kept in evaluation-validation.earlier.json and return to the table when their data is scored "
        "again"]
    assert json.loads(earlier.read_text()) == full
    before = {f.name: f.read_bytes() for f in run.glob("evaluation-validation.*")}
    written = io._fsynced_temp

    def full_disk_on_the_earlier_rows(path, data):
        if path.name.endswith(".earlier.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return written(path, data)

    with monkeypatch.context() as m:
        m.setattr(io, "_fsynced_temp", full_disk_on_the_earlier_rows)
        with pytest.raises(EvaluationNotSaved, match="the disk is full"):
            evaluate_run(run, "latest", split="validation", max_batches=2)
    assert {f.name: f.read_bytes() for f in run.glob("evaluation-validation.*")} == before  # all old
    again = evaluate_run(run, "latest", split="validation", max_batches=2)  # the first batches again
    assert again[0]["model"] == last
    assert json.loads(table.read_text()) == full[:-1] + again  # the set-aside rows are back
    assert json.loads(earlier.read_text()) == [one]


def test_a_damaged_checkpoint_asked_for_by_name_is_refused_in_one_sentence(run, kgpt2_cli):
    """It first warned "using an older one" (the check for an align run picked `latest`), then refused it."""
    newest = _stage_ends(run)[-1]
    _truncate(newest.path / "weights.npz")
    size = json.loads((newest.path / "manifest.json").read_text())["files"]["weights.npz"]["size"]
    damage = f"checkpoint '{newest.path}' is damaged (weights.npz is 100 bytes, its manifest says {size})"
    for name in (newest.id, f"base,{newest.id}"):
        r = kgpt2_cli("evaluate", "--run", run, "--checkpoint", name, "--split", "validation", "--max-batches", "1")
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.strip().splitlines() == [f"kgpt2: error: {damage}; choose another checkpoint"]
    r = kgpt2_cli("-q", "evaluate", "--run", run, "--checkpoint", "all", "--split", "validation", "--max-batches", "1")
    assert r.returncode == 0 and newest.id not in r.stdout and _stage_ends(run)[0].id in r.stdout
    assert r.stderr.strip().splitlines() == [f"kgpt2: {damage}; it is skipped and left as it is"]  # once


def test_a_damaged_optimizer_state_does_not_stop_evaluation(run, tiny_run, caplog):
    """Scoring loads only the weights, yet a stage whose optimizer.npz was damaged was refused by name and
    skipped by `all` and `latest`. Now it is scored from its verified weights, with one note."""
    from kgpt2.evaluate import evaluate_run

    first, newest = _stage_ends(run)
    for ckpt in (first, newest):
        _truncate(ckpt.path / "optimizer.npz")
    intact = evaluate_run(tiny_run, "all", split="validation", max_batches=1, save=False)
    assert evaluate_run(run, "all", split="validation", max_batches=1, save=False) == intact
    assert evaluate_run(run, "stage-1", split="validation", max_batches=1, save=False) == intact[:1]
    assert evaluate_run(run, "latest", split="validation", max_batches=1, save=False) == intact[-1:]
    notes = [r.getMessage() for r in caplog.records if first.id in r.getMessage()]
    assert notes[0] == (f"checkpoint '{first.path}' is damaged (optimizer.npz is 100 bytes, its manifest says "
                        f"{json.loads((first.path / 'manifest.json').read_text())['files']['optimizer.npz']['size']}) "
                        "but its weights verify, so it is evaluated (training cannot resume from it)")
    _truncate(first.path / "weights.npz")  # the weights themselves: refused, however it is asked for
    with pytest.raises(UserError, match=f"{first.id}' is damaged \\(weights.npz is 100 bytes"):
        evaluate_run(run, "stage-1", split="validation", max_batches=1, save=False)


def test_a_disk_that_fills_before_the_plot_keeps_the_table_and_says_so(run, monkeypatch, caplog, kgpt2_cli):
    """The .json and .csv were written, then the PNG's write failed, and the evaluation said it was not saved."""
    import errno
    import os

    from kgpt2 import evaluation_table
    from kgpt2.evaluate import evaluate_run

    def disk_full(fig, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(evaluation_table, "save_figure", disk_full)
    with caplog.at_level("WARNING", logger="kgpt2"):
        rows = evaluate_run(run, "latest", split="validation", max_batches=1)
    saved = json.loads((run / "evaluation-validation.json").read_text())
    assert [r["model"] for r in saved] == [r["model"] for r in rows] and len(rows) == 1
    assert (run / "evaluation-validation.csv").is_file() and not (run / "evaluation-validation.png").exists()
    assert "saving the evaluation plot failed at" in caplog.text and "the disk is full" in caplog.text
    assert "the table (evaluation-validation.json, .csv) was saved" in caplog.text
    (run / "evaluation-validation.png").write_bytes(b"an older plot")  # the CLI does not claim a plot it lacks
    r = kgpt2_cli("-q", "evaluate", "--run", run, "--checkpoint", "latest", "--split", "validation", "--max-batches", "1")
    assert r.returncode == 0 and "(the plot could not be written)" in r.stdout and ".png" not in r.stdout, r.stdout
