"""`kgpt2 pretrain summary` of a run trained without `train.eval_every`: the losses it does have, labelled."""

import json

import pytest

from kgpt2.cli import main

pytestmark = pytest.mark.backend_neutral  # reads a run's log files, no model


def _run_without_evaluations(tmp_path):
    """100 steps, one row each, step k's own loss 5 - 0.01 k; `fit` restarts at step 50 (a checkpoint), stage 2
    starts at step 96; logged as Keras logs it: the running mean since the `fit` call began; no logs/evals.csv."""
    from kgpt2.config import load_config, save_config

    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    save_config(load_config(None, ["train.batch_size=4", "data.sequence_length=8", "train.checkpoint_every=50",
                                   f"checkpoints_root={tmp_path}", "run=run"]), run / "config.json")
    rows = []
    for step in range(1, 101):
        since = 0 if step <= 50 else 50
        running = sum(5 - 0.01 * k for k in range(since + 1, step + 1)) / (step - since)
        rows.append(f"{step},{1 if step < 96 else 2},{running:.6f},0.5,1e-3,99.0,{1000 + 0.05 * step:.4f},0,{since}")
    (run / "logs" / "steps.csv").write_text("step,stage,loss,accuracy,learning_rate,tokens_per_s,time,padding,"
                                            "since_step\n" + "\n".join(rows) + "\n")
    return run


def test_a_run_without_evaluations_shows_its_training_loss(tmp_path, capsys):
    run = _run_without_evaluations(tmp_path)
    assert main(["-q", "pretrain", "summary", "--run", str(run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    # the last stage's steps (96-100) of the last tenth of the run, each step's own loss, not the running mean
    assert summary["final_train_loss"] == pytest.approx(5 - 0.01 * 98, abs=1e-4)
    assert summary["final_train_steps"] == "96-100"
    assert "best_val_loss" not in summary

    assert main(["-q", "pretrain", "summary", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "final training loss: 4.02 (mean of steps 96-100)" in out
    assert "validation loss: none logged (no evaluation ran)" in out
    assert f"evaluate --run {run} --split validation" in out


def test_the_summary_is_in_words_and_json_keeps_the_keys(tmp_path, capsys):
    """It printed run_summary's keys (ms_per_step_median, final_train_loss, ...) as its labels."""
    run = _run_without_evaluations(tmp_path)
    (run / "stages.json").write_text(json.dumps([{"loss": 4.5, "accuracy": 0.2, "stage": 1, "step": 95}]))
    assert main(["-q", "pretrain", "summary", "--run", str(run), "--json"]) == 0
    keys = json.loads(capsys.readouterr().out)
    assert {"ms_per_step_median", "final_train_loss", "best_val_loss", "tokens_per_step"} <= set(keys)
    assert main(["-q", "pretrain", "summary", "--run", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    labels = [line.split(":")[0].strip() for line in lines]
    assert not [label for label in labels if "_" in label], lines
    assert labels == ["run", "steps", "tokens per step", "steps per execution", "first execution, compile included",
                      "time per step, median", "time per step, 90th percentile", "time per step, wall clock",
                      "evaluations", "evaluation time", "final training loss", "best validation loss",
                      "final validation loss", "validation losses from"]
    assert "time per step, wall clock: 50.0 ms" in lines[7] and lines[1].endswith(": 100")
    assert [line.strip() for line in lines[-3:]] == [
        "best validation loss: 4.5 (step 95)", "final validation loss: 4.5 (step 95)",
        "validation losses from: stage ends (stages.json)"]
    assert len({line.index(":") for line in lines}) == 1  # the labels right-aligned on the colon


def test_the_validation_after_each_stage_is_the_validation_loss_then(tmp_path):
    from kgpt2.pretrain import run_summary

    run = _run_without_evaluations(tmp_path)
    (run / "stages.json").write_text(json.dumps([{"loss": 4.5, "accuracy": 0.2, "stage": 1, "step": 95},
                                                 {"loss": 4.6, "accuracy": 0.2, "stage": 2, "step": 100}]))
    summary = run_summary(run)
    assert (summary["best_val_loss"], summary["best_step"], summary["final_val_loss"], summary["final_step"]) == \
        (4.5, 95, 4.6, 100)
    assert summary["val_loss_from"] == "stage ends (stages.json)"


@pytest.mark.parametrize("text, message", [
    (b"garbage,,,\n\x00\n", "logs/steps.csv has no step column; was it edited?"),
    (b"step,loss\n1,2.5\n", "logs/steps.csv has no time, tokens_per_s columns; was it edited?"),
    (b"\xff\xfe\n", "logs/steps.csv does not read as a table ('utf-8' codec can't decode"),
    (b"", "has no logged steps yet"),  # created, then killed before its header
], ids=["garbage", "foreign-columns", "utf-16", "empty"])
def test_a_damaged_step_log_is_one_sentence(tmp_path, kgpt2_cli, text, message):
    run = _run_without_evaluations(tmp_path)
    (run / "logs" / "steps.csv").write_bytes(text)
    result = kgpt2_cli("pretrain", "summary", "--run", run)
    assert result.returncode == 2 and "Traceback" not in result.stderr and message in result.stderr


def test_the_time_between_a_killed_process_and_its_resume_is_not_training_time(tmp_path):
    """ms_per_step_wall divided the whole span of the step log by its steps: a run killed at step 50 and resumed
    an hour later (a Colab disconnect) reported ~36,000 ms a step instead of 50."""
    from kgpt2.pretrain import run_summary

    run = _run_without_evaluations(tmp_path)
    log = run / "logs" / "steps.csv"
    assert run_summary(run)["ms_per_step_wall"] == pytest.approx(50.0, abs=0.01)  # an older log: one process
    header, *rows = log.read_text().splitlines()
    resumed = []
    for row in rows:
        fields = row.split(",")
        later = int(fields[0]) > 50  # the second process: an hour later
        fields[6] = f"{float(fields[6]) + 3600 * later:.4f}"
        resumed.append(",".join([*fields, "4600.0" if later else "1000.0"]))
    log.write_text(f"{header},process\n" + "\n".join(resumed) + "\n")
    # rows 1..50 and 51..100 of each process, 0.05 s apart: 49 steps each
    assert run_summary(run)["ms_per_step_wall"] == pytest.approx(50.0, abs=0.01)
