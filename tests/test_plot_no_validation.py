"""loss.png of a run with a stage trained without a validation split (continued on new shards that hold none, say):
the "validation after each stage" panel left that stage out without a word (its x axis jumped from 1 to 3, or a
run of two such stages showed one stage's point as if it had been the only one). Now the stage keeps its place and
the plot says "stage 2: no validation split". `KGPT2_SCREENSHOT_DIR=DIR` keeps the PNGs there to look at."""

from __future__ import annotations

import math
import os
import shutil

import pytest
from test_plots import _write_run

pytestmark = pytest.mark.backend_neutral  # plots from files

MEASURED = [{"stage": 1, "loss": 5.91, "accuracy": 0.066, "step": 42},
            {"stage": 3, "loss": 4.76, "accuracy": 0.112, "step": 148}]
TRAINED_ONLY = {"stage": 2, "articles": 30, "step": 90}  # what `kgpt2 train` records without a validation split


def _figure(run):
    from kgpt2.training.run_plot import plot_run, run_figure

    plot_run(run)  # and loss.png, to look at
    if os.environ.get("KGPT2_SCREENSHOT_DIR"):
        shutil.copy(run / "loss.png", os.path.join(os.environ["KGPT2_SCREENSHOT_DIR"], f"{run.name}-loss.png"))
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = run_figure(run)
    FigureCanvasAgg(fig).draw()  # as savefig draws it: the texts have their places
    return fig


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def _inside(fig, text) -> bool:
    """The text is drawn within its axes' frame (not clipped off, not over the neighbouring panel)."""
    box = text.get_window_extent(fig.canvas.get_renderer())  # the Agg canvas `_figure` drew on
    frame = text.axes.get_window_extent()
    return frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1


def test_a_stage_without_validation_keeps_its_place_and_says_so(tmp_path):
    _write_run(tmp_path / "middle", [MEASURED[0], TRAINED_ONLY, MEASURED[1]])
    fig = _figure(tmp_path / "middle")
    panel = next(ax for ax in fig.axes if ax.get_title() == "validation after each stage")
    assert list(panel.get_xticks()) == [1, 2, 3], "stage 2 has its place on the axis"
    note = [t for t in panel.texts if t.get_text() == "stage 2: no validation split"]
    assert len(note) == 1 and note[0].get_position()[0] == 2 and _inside(fig, note[0])
    loss = panel.get_lines()[0]
    assert list(loss.get_xdata()) == [1, 2, 3] and math.isnan(loss.get_ydata()[1]), "no loss drawn at stage 2"
    assert ["5.910", "4.760"] == [t for t in _texts(panel) if t[0].isdigit()]


def test_a_run_whose_second_stage_had_none_shows_both_stages(tmp_path):
    """One stage measured of two: it was drawn as a one-stage run (the point on the training curve, nothing else)."""
    _write_run(tmp_path / "second", [MEASURED[0], TRAINED_ONLY])
    fig = _figure(tmp_path / "second")
    panel = next(ax for ax in fig.axes if ax.get_title() == "validation after each stage")
    assert list(panel.get_xticks()) == [1, 2]
    note = [t for t in panel.texts if t.get_text() == "stage 2: no validation split"]
    assert len(note) == 1 and _inside(fig, note[0]), "at the axis's end: within the frame, off the accuracy axis"


def test_a_run_without_any_validation_says_so_on_its_one_panel(tmp_path):
    _write_run(tmp_path / "none", [{"stage": 1, "step": 60}, {**TRAINED_ONLY, "step": 148}])
    fig = _figure(tmp_path / "none")
    assert len(fig.axes) == 1, "no validation to plot: the training curve alone"
    note = [t for t in fig.axes[0].texts if t.get_text() == "stages 1, 2: no validation split"]
    assert len(note) == 1 and _inside(fig, note[0])
