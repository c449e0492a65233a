"""The PNGs as a person reads them, checked on the drawn figures: every axis says what it counts, percent ticks
carry the decimals they need and no trailing zeros, bar names sit under their bars, no line that says nothing."""

import json
import re

import numpy as np
import pytest
from test_plots import _write_run, figures  # noqa: F401  (the fixture)

pytestmark = pytest.mark.backend_neutral  # plots from files

PLAIN_PERCENT = re.compile(r"^-?\d+(\.\d*[1-9])?%$")  # 3%, 3.5%, 3.52%; not 3.500%, 4.0%


def _drawn(fig):
    """`fig` drawn as savefig drew it (a closed figure's own canvas draws nothing)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig


def _tick_texts(axis) -> list[str]:
    """The tick labels drawn: those of the ticks within the axis's view."""
    low, high = sorted(axis.get_view_interval())
    return [t.label1.get_text() for t in axis.get_major_ticks() if low <= t.get_loc() <= high and t.label1.get_text()]


def _rows(accuracies, names=None):
    names = names or [f"ckpt-{i}" for i in range(1, len(accuracies) + 1)]
    return [{"model": n, "loss": 4.0, "accuracy": a, "perplexity": 60.0, "split": "test", "tokens": 8, "step": i,
             "stage": i} for i, (n, a) in enumerate(zip(names, accuracies), 1)]


def test_bar_accuracy_ticks_have_no_trailing_zeros(tmp_path, figures):  # noqa: F811
    """The quickstart's evaluation-test.png read 0.0%, 2.0%, ... 12.0%."""
    from kgpt2.evaluation_table import save_table

    save_table(tmp_path, _rows([0.0018, 0.049, 0.106, 0.113]), "test")
    ticks = _tick_texts(_drawn(figures[0]).axes[0].yaxis)
    assert ticks == ["0%", "2%", "4%", "6%", "8%", "10%", "12%"]


@pytest.mark.parametrize("accuracies, expected", [
    ((0.0347, 0.0352), ["3.47%", "3.5%", "3.52%"]),  # a narrow span: 3.500%, 3.520% before
    ((0.0331, 0.0506), ["3.5%", "4%", "4.5%", "5%"]),  # 3.50%, 4.00% before
    ((0.066, 0.134), ["8%", "10%", "12%"]),  # 8.0% before
])
def test_stage_accuracy_ticks_carry_the_decimals_they_need(tmp_path, figures, accuracies, expected):  # noqa: F811
    from kgpt2.training.run_plot import plot_run

    _write_run(tmp_path, [{"stage": 1, "loss": 6.864, "accuracy": accuracies[0], "step": 14},
                          {"stage": 2, "loss": 6.832, "accuracy": accuracies[1], "step": 30}], steps=30)
    plot_run(tmp_path)
    training, validation, accuracy = _drawn(figures[0]).axes
    ticks = _tick_texts(accuracy.yaxis)
    assert all(PLAIN_PERCENT.match(t) for t in ticks), ticks
    assert set(expected) <= set(ticks), ticks
    assert len(set(ticks)) == len(ticks)  # decimals enough to tell the ticks apart
    assert training.get_ylabel() == validation.get_ylabel() == "loss (nats/token)"  # as eval_loss.png says


def test_the_margin_histogram_says_what_it_counts(tmp_path, figures):  # noqa: F811
    """evaluation-preferences.png's histogram had no axis labels: a count of what, over what."""
    from kgpt2.evaluation_table import save_alignment_table
    from kgpt2.run import Run

    row = {"model": "ckpt-24", "reward_accuracy": 0.525, "split": "preferences", "pairs": 40, "step": 24}
    save_alignment_table(Run(tmp_path / "dpo"), [row | {"margins": np.linspace(-0.2, 0.3, 40)}])
    kto = row | {"ranking_accuracy": 0.5, "model": "ckpt-8", "step": 8}
    save_alignment_table(Run(tmp_path / "kto"), [kto | {"margins": np.linspace(-0.2, 0.3, 40)}])
    (reward, margins), (_, kto_margins) = (_drawn(f).axes for f in figures)
    assert margins.get_xlabel() == "log-ratio margin vs the reference, chosen - rejected (nats)"
    assert margins.get_ylabel() == "held-out pairs"
    assert kto_margins.get_xlabel() == "log-ratio vs the reference, signed by the label (nats)"
    assert kto_margins.get_ylabel() == "held-out examples"
    assert all(PLAIN_PERCENT.match(t) for t in _tick_texts(reward.yaxis))


def test_bar_names_are_level_when_they_fit_and_end_at_their_bars_when_slanted(tmp_path, figures):  # noqa: F811
    """Names were always slanted 30 degrees and centred, so a two-line "ckpt-234 / stage 2" sat beside its bar."""
    from kgpt2.evaluation_table import save_table

    save_table(tmp_path / "few", _rows([0.0018, 0.049, 0.106, 0.113]), "test")
    many = [f"ckpt-{1000 * i:,}".replace(",", "") for i in range(1, 13)]
    save_table(tmp_path / "many", _rows(list(np.linspace(0.01, 0.2, 12)), many), "test")
    few_fig, many_fig = (_drawn(f) for f in figures)
    for ax in few_fig.axes:
        assert {t.get_rotation() for t in ax.get_xticklabels()} == {0.0}
        assert [t.get_text() for t in ax.get_xticklabels()] == [f"ckpt-{i}\nstage {i}" for i in range(1, 5)]
    for ax in many_fig.axes:
        labels = ax.get_xticklabels()
        assert {(t.get_rotation(), t.get_horizontalalignment(), t.get_rotation_mode()) for t in labels} == {
            (30.0, "right", "anchor")}
    saved = json.loads((tmp_path / "many" / "evaluation-test.json").read_text())
    assert [r["model"] for r in saved] == many


def test_a_one_stage_run_draws_no_stage_start_line(tmp_path, figures):  # noqa: F811
    """A lone dotted "stage starts" line at step 1 marked nothing; a second stage's start is still marked."""
    from kgpt2.training.run_plot import plot_run

    _write_run(tmp_path / "one", [{"stage": 1, "loss": 6.84, "accuracy": 0.039, "step": 30}], steps=30)
    _write_run(tmp_path / "two", [{"stage": 1, "loss": 6.86, "accuracy": 0.033, "step": 14},
                                  {"stage": 2, "loss": 6.83, "accuracy": 0.051, "step": 30}], steps=30)
    steps_csv = tmp_path / "two" / "logs" / "steps.csv"
    lines = steps_csv.read_text().splitlines()
    steps_csv.write_text("\n".join(lines[:15] + [re.sub(r"^(\d+),1,", r"\1,2,", x) for x in lines[15:]]) + "\n")
    plot_run(tmp_path / "one")
    plot_run(tmp_path / "two")
    one, two = (f.axes[0] for f in figures)
    assert "stage starts" not in [line.get_label() for line in one.get_lines()]
    (start,) = [line for line in two.get_lines() if line.get_label() == "stage starts"]
    assert list(start.get_xdata()) == [15, 15]


def test_training_loss_logged_every_n_steps_says_so_and_one_row_shows(tmp_path, figures):  # noqa: F811
    """With train.steps_per_execution = 10 (the Shakespeare recipe) a row is the mean of 10 steps, not "per step";
    and a run of one logged row drew an invisible line of one point."""
    from kgpt2.training.run_logs import STEP_FIELDS
    from kgpt2.training.run_plot import plot_run

    for run, steps in (("every10", range(10, 70, 10)), ("one-row", [10])):
        (tmp_path / run / "logs").mkdir(parents=True)
        rows = [",".join(map(str, [s, 1, 4.2 - s / 100, 0.1, 1e-3, 1000.0, 1e9 + s, "", 0, "1.0"])) for s in steps]
        (tmp_path / run / "logs" / "steps.csv").write_text("\n".join([",".join(STEP_FIELDS), *rows]) + "\n")
        plot_run(tmp_path / run)
    every10, one_row = (f.axes[0].get_lines()[0] for f in figures)
    assert every10.get_label() == "train loss, mean of each 10 steps"
    assert one_row.get_label() == "train loss per step" and one_row.get_marker() == "o"


def test_the_reference_model_bar_says_why_it_is_zero(tmp_path, figures):  # noqa: F811
    """The base model is DPO's reference: its rewards are 0, so no margin is > 0 and its bar is 0%. A bare "0.0%"
    read as a model that always prefers the rejected answer."""
    from kgpt2.evaluation_table import save_alignment_table
    from kgpt2.run import Run

    zero = np.zeros(38)
    base = {"model": "base", "reward_accuracy": 0.0, "reward_margin": 0.0, "chosen_reward": 0.0,
            "rejected_reward": 0.0, "split": "preferences", "pairs": 38, "margins": zero}
    tuned = base | {"model": "ckpt-24", "reward_accuracy": 0.684, "reward_margin": 0.036, "chosen_reward": 0.009,
                    "rejected_reward": -0.027, "step": 24, "margins": np.linspace(-0.5, 1.5, 38)}
    save_alignment_table(Run(tmp_path / "dpo"), [base, tuned])
    reward = _drawn(figures[0]).axes[0]
    labels = [t.get_text() for t in reward.texts]
    assert labels == ["0.0% (the reference:\nevery margin is 0)", "68.4%"]
