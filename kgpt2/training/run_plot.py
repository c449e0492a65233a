"""The run's plot, loss.png, drawn from its logs (kgpt2.training.run_logs reads them): training loss per step
(`per_step_loss`) with stage boundaries marked, and validation metrics per stage (one stage: within it, from
logs/evals.csv; accuracy in percent; a stage trained without a validation split is named as such). The demo draws
the same figure, unsaved, from a run that may still be training (`run_figure`).

    >>> import tempfile
    >>> from kgpt2.training.run_logs import write_stage_table
    >>> from kgpt2.training.run_plot import no_validation_note, run_figure
    >>> run_dir = tempfile.mkdtemp()
    >>> run_figure(run_dir) is None  # nothing logged yet
    True
    >>> write_stage_table(run_dir, [{"stage": 1, "loss": 3.5, "accuracy": 0.3}, {"stage": 2}])
    >>> [ax.get_title() for ax in run_figure(run_dir).axes][1]
    'validation after each stage'
    >>> no_validation_note([2])
    'stage 2: no validation split'
"""

from __future__ import annotations

import json
from pathlib import Path

from kgpt2.evaluation_table import percent_axis
from kgpt2.io import save_figure
from kgpt2.run import Run
from kgpt2.training.run_logs import per_step_loss, read_steps

LOSS_LABEL = "loss (nats/token)"  # cross-entropy per target token, as eval_loss.png says


def plot_run(run_dir) -> Path | None:
    """loss.png: training loss per step with stage boundaries, and validation: after each stage when there are
    several; within the run (logs/evals.csv, `train.eval_every`) while there is at most one; with neither, the
    one stage's validation is marked on the training curve (a panel of a single point showed nothing)."""
    import matplotlib

    matplotlib.use("Agg")
    fig = run_figure(run_dir)
    return None if fig is None else save_figure(fig, Run(run_dir).loss_plot)


def run_figure(run_dir):
    """The figure `plot_run` saves (None while nothing is logged), unsaved: the demo draws it from the logs of a
    run that may be training. Made without pyplot, whose list of open figures is not safe across the threads
    the demo answers in."""
    from matplotlib.figure import Figure

    run = Run(run_dir)
    steps = read_steps(run_dir)
    stages_path = run.stages_json
    stages = json.loads(stages_path.read_text()) if stages_path.is_file() else []
    stage_metrics = [m for m in stages if "loss" in m]
    unmeasured = [m["stage"] for m in stages if "loss" not in m and "stage" in m]  # without a validation split
    if steps.empty and not stage_metrics:
        return None
    evals = _validation_evals(run) if len(stages) < 2 else None
    # Beside: several stages (one without validation still has its place), validation within the one stage, or no
    # steps; else one panel, the one stage's validation a point on the curve (a panel of a single point showed
    # nothing).
    beside = (len(stages) > 1 and bool(stage_metrics)) or evals is not None or steps.empty
    fig = Figure(figsize=(11, 4) if beside else (7, 4))
    axes = fig.subplots(1, 2 if beside else 1, squeeze=False)
    ax1 = axes[0][0]
    if not steps.empty:
        _plot_training_loss(ax1, steps)
        if not beside and stage_metrics:
            _mark_stage_validation(ax1, stage_metrics[0], int(steps["step"].max()))
        if not beside and unmeasured:  # no panel of its own to say it in
            ax1.text(0.02, 0.04, no_validation_note(unmeasured), transform=ax1.transAxes, fontsize=8, color="0.35")
        _mark_stage_starts(ax1, steps)
        ax1.set_xlabel("global step")
        ax1.set_ylabel(LOSS_LABEL)
        ax1.legend(loc="upper right", fontsize=8)
    ax1.set_title(f"{run.path.name}: training")
    if evals is not None:
        _plot_validation_within(axes[0][1], evals, stage_metrics[0] if stage_metrics else None)
    elif beside:
        _plot_stage_validation(axes[0][1], stage_metrics, unmeasured)
        axes[0][1].set_title("validation after each stage")
    fig.tight_layout()
    return fig


def no_validation_note(stages: list) -> str:
    """What the plot says of stages trained without a validation split (no validation loss to plot).

        >>> no_validation_note([2]), no_validation_note([1, 3])
        ('stage 2: no validation split', 'stages 1, 3: no validation split')
    """
    return f"stage{'s' if len(stages) > 1 else ''} {', '.join(map(str, stages))}: no validation split"


def _mark_stage_starts(ax, steps) -> None:
    """A dotted line where each stage after the first starts (at the first step a lone line said nothing)."""
    starts = steps.groupby("stage")["step"].min().sort_values().iloc[1:]
    for i, step in enumerate(starts):  # one legend entry says what the dotted lines are
        ax.axvline(step, color="grey", ls=":", lw=0.8, label="_" if i else "stage starts")


def _validation_evals(run: Run):
    """logs/evals.csv's rows with a validation loss (`train.eval_every`), or None when there are none."""
    import pandas as pd

    try:
        evals = pd.read_csv(run.evals_log).dropna(subset=["val_loss"])
    except (OSError, ValueError, KeyError):  # none, empty, or not the evaluation log's columns
        return None
    return evals if not evals.empty else None


def _mark_stage_validation(ax, stage: dict, last_step: int) -> None:
    """The one stage's validation loss, a point at its last step on the training curve; its accuracy in the label."""
    ax.plot([stage.get("step", last_step)], [stage["loss"]], "o", ms=9, mfc="none", mew=1.5, color="C3",
            label=f"validation after the stage: loss {stage['loss']:.3f}, accuracy {stage['accuracy']:.1%}")


def _plot_validation_within(ax, evals, stage_end: dict | None) -> None:
    """Validation loss (left) and accuracy (right, %) at each evaluation during training, and at the stage's end."""
    xs, losses, accs = list(evals["step"]), list(evals["val_loss"]), list(evals["val_accuracy"])
    if stage_end is not None and "step" in stage_end and stage_end["step"] not in xs:  # older stages.json: no step
        xs, losses, accs = xs + [stage_end["step"]], losses + [stage_end["loss"]], accs + [stage_end["accuracy"]]
    right = ax.twinx()
    ax.plot(xs, losses, "o-", ms=4, color="C0", label="val loss")
    right.plot(xs, accs, "s--", ms=3, color="C1", label="val accuracy")
    ax.annotate(f"{losses[-1]:.3f}", (xs[-1], losses[-1]), xytext=(0, -14), textcoords="offset points",
                ha="right", fontsize=8, color="C0")
    right.annotate(f"{accs[-1]:.1%}", (xs[-1], accs[-1]), xytext=(0, 8), textcoords="offset points", ha="right",
                   fontsize=8, color="C1")
    for axis in (ax, right):
        axis.margins(y=0.18)
    ax.set_xlabel("global step")
    ax.set_ylabel(LOSS_LABEL)
    percent_axis(right, "next-token accuracy")
    ax.set_title("validation during training" + (" (one stage)" if stage_end is not None else ""))
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)


def _plot_stage_validation(ax, stage_metrics: list, unmeasured: list = ()) -> None:
    """Loss (left axis) and accuracy (right axis, %) after each stage, each point labelled with its value: the two
    axes scale apart, so their points can fall on the same spot; a hollow circle around a small square keeps both
    visible there. A stage without validation keeps its place on the axis, with a line saying so (the curves break
    there rather than pass a value it never had)."""
    by_stage = {m["stage"]: m for m in stage_metrics}
    xs = sorted({*by_stage, *unmeasured})
    right = ax.twinx()
    for axis, key, style, label, offset, fmt in (
            (ax, "loss", dict(marker="o", ms=11, mfc="none", ls="-", color="C0"), "val loss", -14, "{:.3f}"),
            (right, "accuracy", dict(marker="s", ms=5, ls="--", color="C1"), "val accuracy", 8, "{:.1%}")):
        ys = [by_stage[x][key] if x in by_stage else float("nan") for x in xs]
        axis.plot(xs, ys, label=label, **style)
        for x, y in zip(xs, ys):
            if x in by_stage:
                axis.annotate(fmt.format(y), (x, y), xytext=(0, offset), textcoords="offset points", ha="center",
                              fontsize=8, color=style["color"])
        axis.margins(x=0.1, y=0.18)  # room for the labels inside the frame
    if unmeasured:  # the axis autoscales to the points drawn: an end stage without one would sit on the frame
        ax.set_xlim(xs[0] - 0.1 * (xs[-1] - xs[0]), xs[-1] + 0.1 * (xs[-1] - xs[0]))
    for x in unmeasured:  # upright at the stage's place: it fits between neighbours, inside the frame
        ax.text(x, 0.5, no_validation_note([x]), transform=ax.get_xaxis_transform(), rotation=90, ha="center",
                va="center", fontsize=8, color="0.35")
    ax.set_xlabel("stage")
    ax.set_ylabel(LOSS_LABEL)
    percent_axis(right, "next-token accuracy")
    ax.set_xticks(xs)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)


def _plot_training_loss(ax, steps) -> None:
    """Each step's loss, faint, and its exponential moving average (TensorBoard's smoothing, debiased at the
    start). The rows an older kgpt2 logged (no `since_step`) have only their running means, shown as they are."""
    loss = per_step_loss(steps) if "since_step" in steps else None
    few = dict(marker="o", ms=3) if len(steps) < 20 else {}  # a line of one row draws nothing: its point does
    if loss is None or loss.isna().all():
        ax.plot(steps["step"], steps["loss"], lw=1, label="train loss (running mean since the last checkpoint)", **few)
        return
    loss = loss.fillna(steps["loss"])
    smooth = len(loss) >= 20
    # train.steps_per_execution > 1 logs a row every n steps
    every = max(1, int(steps["step"].diff().median())) if len(steps) > 1 else 1
    ax.plot(steps["step"], loss, lw=0.8, alpha=0.35 if smooth else 1.0, color="C0", **few,
            label="train loss per step" if every == 1 else f"train loss, mean of each {every} steps")
    if smooth:
        span = max(5, len(loss) // 25)
        ax.plot(steps["step"], loss.ewm(span=span).mean(), lw=1.5, color="C0",
                label=f"moving average ({span * every} steps)")
