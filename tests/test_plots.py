"""The PNGs a run keeps (loss.png, eval_loss.png, evaluation-<split>.png, evaluation-preferences.png), checked through
matplotlib's objects: accuracy in percent in every plot with the axis saying so, a one-stage run's validation shown
usefully, the best loss named inside the axes, a linear perplexity axis unless the values span a factor of 10."""

import csv
import json

import numpy as np
import pytest

pytestmark = pytest.mark.backend_neutral  # plots from files


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, in order (still drawn: their artists have places)."""
    from kgpt2 import evaluation_table, io
    from kgpt2.training import periodic_eval, run_plot

    saved = []

    def save_figure(fig, path, dpi=100):
        saved.append(fig)
        return io.save_figure(fig, path, dpi)

    for module in (evaluation_table, periodic_eval, run_plot):
        monkeypatch.setattr(module, "save_figure", save_figure)
    return saved


def _write_run(run, stages, evals=None, steps=148):
    """A run folder's logs: a step log of `steps` steps (stage 1), stages.json, and logs/evals.csv if given."""
    from kgpt2.training.periodic_eval import EVAL_FIELDS
    from kgpt2.training.run_logs import STEP_FIELDS

    (run / "logs").mkdir(parents=True)
    with open(run / "logs" / "steps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(STEP_FIELDS)
        for s in range(1, steps + 1):
            w.writerow([s, 1, 7 - s / 50, 0.05, 1e-3, 1000.0, 1e9 + s, "", 0, "1.0"])
    (run / "stages.json").write_text(json.dumps(stages))
    if evals is not None:
        with open(run / "logs" / "evals.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(EVAL_FIELDS)
            w.writerows(evals)


def _percent(axis, value):
    """What the axis's tick label says for `value`."""
    return axis.yaxis.get_major_formatter()(value, 0)


def test_accuracy_is_a_percent_in_every_plot_and_the_axis_says_so(tmp_path, figures):
    """loss.png showed accuracy as a fraction (0.112) while evaluation-<split>.png showed it as 11.2%."""
    from kgpt2.evaluation_table import save_alignment_table, save_table
    from kgpt2.run import Run
    from kgpt2.training.run_plot import plot_run

    stages = [{"stage": 1, "loss": 5.91, "accuracy": 0.066, "step": 42},
              {"stage": 2, "loss": 4.76, "accuracy": 0.112, "step": 148}]
    _write_run(tmp_path, stages)
    plot_run(tmp_path)
    rows = [{"model": "base", "loss": 6.9, "accuracy": 0.0018, "perplexity": 1029.8, "split": "test", "tokens": 8},
            {"model": "ckpt-9", "loss": 4.9, "accuracy": 0.113, "perplexity": 138.2, "split": "test", "tokens": 8,
             "step": 9, "stage": 1}]
    save_table(tmp_path, rows, "test")
    save_alignment_table(Run(tmp_path), [{"model": "ckpt-3", "reward_accuracy": 0.72, "split": "preferences",
                                          "pairs": 4, "step": 3, "margins": np.array([0.5, -0.1, 1.0, 0.2])}])
    loss_png, evaluation_png, preferences_png = figures
    stage_accuracy = loss_png.axes[2]  # the right axis of "validation after each stage"
    accuracy, reward = evaluation_png.axes[0], preferences_png.axes[0]
    for axis, label in ((stage_accuracy, "next-token accuracy (%)"), (accuracy, "next-token accuracy (%)"),
                        (reward, "reward accuracy (%)")):
        assert axis.get_ylabel() == label
        assert _percent(axis, 0.25).startswith("25") and _percent(axis, 0.25).endswith("%")
    assert {t.get_text() for t in stage_accuracy.texts} == {"6.6%", "11.2%"}
    assert [t.get_text() for t in accuracy.texts] == ["0.2%", "11.3%"]  # the bars' value labels
    assert [t.get_text() for t in reward.texts] == ["72.0%"]


def test_a_one_stage_run_shows_validation_within_the_stage(tmp_path, figures):
    """A one-stage run's "validation after each stage" panel held a single dot. With evaluations during training
    (`train.eval_every`) the panel shows them by step, ending at the stage's own; without, the panel goes and the
    stage's validation is a point on the training curve, its values in the legend."""
    from kgpt2.training.run_plot import plot_run

    stage = {"stage": 1, "loss": 5.7132, "accuracy": 0.061, "step": 148}
    _write_run(tmp_path / "evals", [stage], evals=[[0, 6.9, 6.95, 0.002, 0.0019, 1.0, 0],
                                                   [75, 6.0, 5.84, 0.05, 0.066, 1.0, 1],
                                                   [135, 5.85, 5.74, 0.05, 0.057, 1.0, 1]])
    _write_run(tmp_path / "none", [stage])
    plot_run(tmp_path / "evals")
    plot_run(tmp_path / "none")
    within, alone = figures
    training, validation, accuracy = within.axes
    assert validation.get_title() == "validation during training (one stage)"
    (loss_line,), (accuracy_line,) = validation.get_lines(), accuracy.get_lines()
    assert list(loss_line.get_xdata()) == [0, 75, 135, 148] and loss_line.get_ydata()[-1] == 5.7132
    assert list(accuracy_line.get_ydata()) == [0.0019, 0.066, 0.057, 0.061]
    (only,) = alone.axes  # one panel: no panel of a single point
    marked = [line for line in only.get_lines() if line.get_label().startswith("validation after the stage")]
    assert len(marked) == 1 and list(marked[0].get_xdata()) == [148] and list(marked[0].get_ydata()) == [5.7132]
    assert marked[0].get_label() == "validation after the stage: loss 5.713, accuracy 6.1%"
    assert marked[0].get_label() in [t.get_text() for t in only.get_legend().get_texts()]


def test_the_best_loss_is_named_inside_the_axes(tmp_path, figures):
    """eval_loss.png's "best ... @ step" note sat below the best point, which is usually the last and lowest one:
    it fell on the tick labels and, with a long step number, off the figure. Now the legend names it, inside."""
    from kgpt2.training.periodic_eval import plot_evals

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "evals.csv").write_text(
        "step,train_loss,val_loss,train_accuracy,val_accuracy,eval_seconds,best\n"
        "0,6.94,6.95,,,1.0,0\n60000,5.9,5.81,,,1.0,1\n120000,5.85,5.7405,,,1.0,1\n")
    plot_evals(tmp_path)
    (fig,) = figures
    (ax,) = fig.axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # a closed figure's canvas draws nothing: give it one that does, as savefig used
    canvas.draw()
    renderer = canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    texts = list(ax.texts) + list(ax.get_legend().get_texts())
    assert "best val loss 5.7405 at step 120000" in [t.get_text() for t in texts]
    for text in texts:
        box = text.get_window_extent(renderer)
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, text


@pytest.mark.parametrize("perplexities, scale", [([369.4], "linear"), ([30.2, 18.5], "linear"),
                                                 ([1029.8, 138.2], "linear"), ([50257.0, 40.4, 24.5], "log")])
def test_perplexity_is_on_a_log_axis_only_when_it_spans_a_factor_of_ten(tmp_path, figures, perplexities, scale):
    """A single model's perplexity was one bar on a log axis between sparse powers of ten."""
    from kgpt2.evaluation_table import save_table

    rows = [{"model": f"ckpt-{i}", "loss": 1.0, "accuracy": 0.4, "perplexity": p, "split": "test", "tokens": 8,
             "step": i} for i, p in enumerate(perplexities, 1)]
    save_table(tmp_path, rows, "test")
    (fig,) = figures
    perplexity = fig.axes[1]
    assert perplexity.get_yscale() == scale
    assert ("log scale" in perplexity.get_title()) == (scale == "log")
    assert perplexity.get_ylabel() == "perplexity"
