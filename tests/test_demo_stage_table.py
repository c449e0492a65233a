"""The demo's stage table (stages.csv) as the page holds it: a stage trained without a validation split had NaN in
its loss, accuracy and perplexity cells, and the columns came in the order the first row's keys happened to have
(validation first, or last when the first stage had none), not stage, step and batches, then the metrics. A row
evaluated from the base model had NaN for its step and stage in the evaluation table, and its steps became 42.0."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.backend_neutral  # tables read from files

MEASURED = {"loss": 4.7615156173706055, "accuracy": 0.11226475983858109, "perplexity": 116.92300220829823,
            "stage": 2, "articles": 40, "batches": 192, "of_batches": 192, "step": 234}
TRAINED_ONLY = {"stage": 1, "articles": 10, "batches": 42, "of_batches": 42, "step": 42}  # no validation split
ORDER = ["stage", "step", "batches", "of_batches", "articles", "loss", "accuracy", "perplexity"]


def _run(tmp_path, stages):
    from kgpt2.training.run_logs import write_stage_table

    write_stage_table(tmp_path, stages)  # as `kgpt2 train` writes it
    (tmp_path / "evaluation-test.csv").write_text(  # as `kgpt2 evaluate` writes it: the base has no step
        "model,loss,accuracy,perplexity,split,tokens,shards,step,stage\n"
        "base,6.9371,0.0018,1029.8011,test,7410,69b2fb39,,\n"
        "ckpt-42,6.2381,0.0493,511.8926,test,7410,69b2fb39,42,1\n")
    return tmp_path


def _cells(table) -> list[list]:
    """The table as the page gets it (Gradio's Dataframe value)."""
    import gradio as gr

    value = gr.Dataframe(interactive=False).postprocess(table)
    return [value.headers, *value.data]


@pytest.mark.parametrize("measured_first", [True, False])
def test_a_stage_without_validation_shows_dashes_in_the_stage_order(tmp_path, measured_first):
    """Either way round: the file's columns start with the first stage's keys (loss first, or stage first)."""
    from kgpt2.serving.run_metrics import metrics

    one, two = (MEASURED, TRAINED_ONLY) if measured_first else (TRAINED_ONLY, MEASURED)
    _, table, *_ = metrics(_run(tmp_path, [{**one, "stage": 1}, {**two, "stage": 2}]), "r")
    headers, *rows = _cells(table)
    assert headers == ORDER
    measured, trained = (rows[0], rows[1]) if measured_first else (rows[1], rows[0])
    assert trained[1:] == [42, 42, 42, 10, "—", "—", "—"], "no NaN: a dash where nothing was measured"
    assert measured[1:] == [234, 192, 192, 40, 4.7615, 0.1123, 116.923]
    assert [rows[0][0], rows[1][0]] == [1, 2]


def test_a_run_without_any_validation_still_has_the_metric_columns(tmp_path):
    from kgpt2.serving.run_metrics import metrics

    _, table, *_ = metrics(_run(tmp_path, [TRAINED_ONLY]), "r")
    assert _cells(table) == [ORDER, [1, 42, 42, 42, 10, "—", "—", "—"]]


def test_the_base_row_of_the_evaluation_table_has_dashes_and_steps_stay_whole(tmp_path):
    from kgpt2.serving.run_metrics import metrics

    _, _, evaluation, *_ = metrics(_run(tmp_path, [MEASURED]), "r")
    headers, base, ckpt = _cells(evaluation)
    assert headers == ["model", "loss", "accuracy", "perplexity", "split", "tokens", "shards", "step", "stage"]
    assert base[-2:] == ["—", "—"] and ckpt[-2:] == [42, 1]
    assert json.dumps(ckpt[-2:]) == "[42, 1]", "whole numbers, not 42.0"
