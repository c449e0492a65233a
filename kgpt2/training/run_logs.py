"""What a run records for people: the step CSV, the stage table and the plots.

    logs/steps.csv     step, stage, loss, accuracy, lr, tokens_per_s (window positions), time,
                       padding (share of the step's target positions that hold no token),
                       since_step (loss and accuracy are Keras' running means over the steps after it),
                       process (when the training process that logged the row started: a resume's rows
                       have their own, so the time between processes is not counted as training)
    stages.csv|json    validation metrics after each stage
    loss.png           training loss per step (`per_step_loss`), stage boundaries marked, and validation
                       metrics per stage (one stage: within it, from logs/evals.csv; accuracy in percent;
                       a stage trained without a validation split is named as such)

(file names from `kgpt2.run.Run`).

    >>> import tempfile
    >>> from kgpt2.training.run_logs import read_steps, write_stage_table
    >>> run_dir = tempfile.mkdtemp()
    >>> write_stage_table(run_dir, [{"stage": 1, "loss": 3.5, "accuracy": 0.3}])
    >>> open(f"{run_dir}/stages.csv").read().splitlines()
    ['stage,loss,accuracy', '1,3.5,0.3']
    >>> len(read_steps(run_dir))
    0
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import socket
import threading
import time
from pathlib import Path

import keras

from kgpt2.evaluation_table import percent_axis
from kgpt2.io import atomic_write_text, save_figure
from kgpt2.run import Run

STEP_FIELDS = ["step", "stage", "loss", "accuracy", "learning_rate", "tokens_per_s", "time", "padding", "since_step",
               "process"]
LOSS_LABEL = "loss (nats/token)"  # cross-entropy per target token, as eval_loss.png says
TENSORBOARD_TAGS = ("loss", "accuracy", "learning_rate")  # the step CSV's columns TensorBoard shows


def truncate_csv(path: Path, fields: list, after_step: int) -> list[dict]:
    """Rewrite a step-keyed CSV (atomically) without its rows past `after_step`; return the kept rows.

    A resume starts from a checkpoint: rows logged after it are replayed, so they go.
    """
    rows = []
    if path.is_file():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= after_step]
    body = ",".join(fields) + "\n" + "".join(",".join(r.get(k) or "" for k in fields) + "\n" for r in rows)
    atomic_write_text(path, body)
    return rows


class StepLog:
    """Append-only per-step CSV; a resume first drops rows past the checkpoint. The same rows go to TensorBoard
    (logs/tensorboard) with the run's global step: Keras' TensorBoard callback would restart its count at every
    `fit` call, and kgpt2 calls `fit` once per checkpoint interval."""

    def __init__(self, path: Path, truncate_after: int = 0, tensorboard_dir: Path | None = None):
        self.path = Path(path)
        self.process = f"{time.time():.3f}"  # one StepLog per training process
        truncate_csv(self.path, STEP_FIELDS, truncate_after)
        # The steps from the checkpoint on are logged again (a resume): TensorBoard's session starts there.
        self.tensorboard = TensorBoardScalars(tensorboard_dir or self.path.parent / "tensorboard",
                                              first_step=truncate_after + 1)

    def callback(self, first_step: int, schedule, stage: int, tokens_per_batch: int, paddings=None):
        """The logger for one `fit` call whose first batch is global step `first_step + 1`
        (`paddings`: the padding share of each of its batches, for the `padding` column)."""
        return _StepLogger(self.path, first_step, schedule, stage, tokens_per_batch, self.tensorboard, paddings,
                           self.process)


_EVENT_FILES = itertools.count()  # this process's event files, for unique names


class TensorBoardScalars:
    """Scalars in a TensorBoard event file, written without TensorFlow.

    `tf.summary` needs TensorFlow, which a run on JAX otherwise never imports (~3.8 s and ~590 MB of the process,
    kgpt2.backend). The tensorboard package holds the event format's parts -- the record framing with its
    checksums (`RecordWriter`) and the `Event` protocol buffer -- but its ready writer opens files through
    TensorFlow whenever that is importable, so the few lines that join the parts are here (PyTorch's SummaryWriter
    joins the same ones). A scalar is an `Event` with a `simple_value`, which TensorBoard shows as a scalar. Each
    `write` appends whole records and closes the file, so a killed run leaves at most its last record cut, which
    TensorBoard's readers skip. Each writer's file opens with a session START at its first step: a resumed run
    logs the steps after its checkpoint again, and TensorBoard then drops the earlier files' values from that step
    on (the killed process's), as it does after a TensorFlow restart, so each step shows once.

        >>> import tempfile
        >>> from pathlib import Path
        >>> scalars = TensorBoardScalars(Path(tempfile.mkdtemp()))
        >>> scalars.write([(1, 1e9, {"loss": 2.5}), (2, 1e9 + 1, {"loss": 2.25})])
        >>> scalars.path.name.startswith("events.out.tfevents.")
        True
    """

    def __init__(self, logdir: Path, first_step: int = 1):
        self.logdir, self.first_step = Path(logdir), int(first_step)
        # TensorBoard reads every file whose name holds "tfevents" (in name order); the rest keeps writers apart.
        name = f"{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_EVENT_FILES)}"
        self.path = self.logdir / f"events.out.tfevents.{name}"
        self._started = False  # the file, with its header and session start, is made by the first write

    def write(self, steps: list) -> None:
        """Append `(step, wall_time, {tag: value})` triples: one scalar event per tag and step."""
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter

        events = []
        if not self._started:
            self.logdir.mkdir(parents=True, exist_ok=True)
            now = time.time()
            events = [Event(wall_time=now, file_version="brain.Event:2"),
                      Event(wall_time=now, step=self.first_step, session_log=SessionLog(status=SessionLog.START))]
        events += [Event(wall_time=wall_time, step=int(step),
                         summary=Summary(value=[Summary.Value(tag=tag, simple_value=float(value))]))
                   for step, wall_time, values in steps for tag, value in values.items()]
        with open(self.path, "ab") as f:
            records = RecordWriter(f)
            for event in events:
                records.write(event.SerializeToString())
        self._started = True


class _StepLogger(keras.callbacks.Callback):
    """Per-step rows of loss, accuracy, learning rate and tokens/s.

    `async_safe`: Keras then runs it on a worker thread and does not wait for
    each step to finish before starting the next (a per-step sync cost 3.6x
    of the throughput on an H100: docs/benchmarks.md). Rows are therefore
    keyed by the step they describe, not by arrival order, buffered under a
    lock, and written sorted.
    """

    async_safe = True

    def __init__(self, path, first_step, schedule, stage, tokens_per_batch, tensorboard: TensorBoardScalars,
                 paddings=None, process: str = ""):
        super().__init__()
        self.paddings, self.process = paddings, process
        self.path, self.first_step, self.schedule = path, first_step, host_schedule(schedule)
        self.tensorboard = tensorboard
        self.stage, self.tokens_per_batch = stage, tokens_per_batch
        self._lock = threading.Lock()
        self._rows: list = []
        self._t0 = None

    def on_train_begin(self, logs=None):
        self._t0, self._first = time.time(), None

    def on_train_batch_end(self, batch, logs=None):
        # `batch` is the last batch of the execution (steps_per_execution may be > 1).
        # Keras has already turned `logs` into Python floats on this worker
        # thread, which waits for the step's loss: `now` is when the step
        # finished on the device (device-synchronised wall time).
        now = time.time()
        done = batch + 1
        step = self.first_step + done
        logs = logs or {}
        lr = self.schedule(step - 1)
        with self._lock:
            if self._first is None:
                self._first = (done, now)
            # The fit call's first row: since the call began (compile and data start included);
            # later rows: steady tokens/s since that first step finished (`steady_tokens_per_s`).
            since_done, since = (0, self._t0) if self._first[0] >= done else self._first
            elapsed = now - since
            row = [step, self.stage + 1, f"{float(logs.get('loss', float('nan'))):.6f}",
                   f"{float(logs.get('accuracy', float('nan'))):.6f}", f"{lr:.3e}",
                   f"{self.tokens_per_batch * (done - since_done) / elapsed:.1f}" if elapsed > 0 else "", f"{now:.4f}",
                   f"{self.paddings[done - 1]:.4f}" if self.paddings is not None and done <= len(self.paddings) else "",
                   self.first_step, self.process]
            self._rows.append(row)
            if len(self._rows) >= 64:
                self._flush()

    def on_train_end(self, logs=None):
        with self._lock:
            self._flush()

    def _flush(self):
        rows, self._rows = sorted(self._rows, key=lambda r: r[0]), []
        if not rows:
            return
        with open(self.path, "a", newline="") as f:
            f.write("".join(",".join(str(v) for v in row) + "\n" for row in rows))
        named = [dict(zip(STEP_FIELDS, row)) for row in rows]
        self.tensorboard.write([(r["step"], float(r["time"]), {tag: r[tag] for tag in TENSORBOARD_TAGS})
                                for r in named])


def host_schedule(schedule):
    """`step -> float` for a Keras learning-rate schedule, cheap enough for every step.

    Called eagerly on JAX, CosineDecay's `ops.cond` closes over fresh arrays
    each call, so JAX compiled a new XLA program per step (~0.3 s on CPU,
    most of a small model's step time; measured in docs/pretraining.md). One
    `jax.jit`, run on the host CPU, compiles it once and never waits on a GPU.
    """
    if keras.backend.backend() != "jax":
        return lambda step: float(keras.ops.convert_to_numpy(schedule(step)))
    import jax

    compiled, cpu = jax.jit(schedule), jax.local_devices(backend="cpu")[0]  # this process's own (several hosts)

    def learning_rate(step):
        with jax.default_device(cpu):
            return float(compiled(step))

    return learning_rate


def steady_tokens_per_s(rows: list[dict], tokens_per_step: int, skip: int) -> float:
    """Tokens/s over the steps after the first `skip` logged ones: the one timing method.

    `rows`: steps.csv rows of one `fit` call (dicts with "step" and "time",
    any order). The clock is the step log's device-synchronised time, so the
    staged trainer (its steps.csv) and benchmarks/train_throughput.py (a
    step log of its own `fit`) are timed the same way over the same steps;
    compile, data start-up and the end of `fit` are outside the interval.

        >>> rows = [{"step": s, "time": 10 + 0.5 * s} for s in range(1, 11)]
        >>> steady_tokens_per_s(rows, tokens_per_step=1000, skip=4)
        2000.0
    """
    rows = sorted(rows, key=lambda r: int(r["step"]))
    if skip < 1 or len(rows) <= skip:
        raise ValueError(f"{len(rows)} logged steps leave none to time after {skip} warm-up steps (at least 1)")
    first, last = rows[skip - 1], rows[-1]  # the clock starts when the last warm-up step finished
    steps = int(last["step"]) - int(first["step"])
    return steps * tokens_per_step / (float(last["time"]) - float(first["time"]))


def read_steps(run_dir):
    import pandas as pd

    path = Run(run_dir).steps_log
    if not path.is_file():
        return pd.DataFrame(columns=STEP_FIELDS)
    # rows come in flushes from a worker thread: order by step
    return pd.read_csv(path).sort_values("step", kind="stable").reset_index(drop=True)


def per_step_loss(steps):
    """The training loss of each logged step, from the step log's running means.

    Keras logs, after n batches of a `fit` call, the mean loss of those n (weighted by batch size; a stage's
    batches are one size). kgpt2 calls `fit` once per checkpoint interval, so the means restart there, and plotted
    as logged the curve fell off a cliff at every checkpoint. Between two rows of one call (`since_step` names the
    call) the batches' mean is (n1 m1 - n0 m0) / (n1 - n0): each step's own loss when every step is logged, the
    mean of the steps since the row before otherwise (`train.steps_per_execution`). NaN for rows logged before
    kgpt2 recorded `since_step`.

        >>> import pandas as pd
        >>> rows = pd.DataFrame({"step": [1, 2, 3, 4], "since_step": [0, 0, 2, 2], "loss": [4.0, 3.5, 2.5, 2.25]})
        >>> per_step_loss(rows).tolist()
        [4.0, 3.0, 2.5, 2.0]
    """
    n = steps["step"] - steps["since_step"]
    total = n * steps["loss"]
    call = steps["since_step"]
    return (total - total.groupby(call).shift(fill_value=0)) / (n - n.groupby(call).shift(fill_value=0))


def write_stage_table(run_dir, stage_metrics: list) -> None:
    import pandas as pd

    run = Run(run_dir)
    atomic_write_text(run.stages_json, json.dumps(stage_metrics, indent=2))
    atomic_write_text(run.stages_csv, pd.DataFrame(stage_metrics).to_csv(index=False))


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
