"""What a run records for people: the step CSV, TensorBoard's scalars, the stage table, and reading them back.

    logs/steps.csv     step, stage, loss, accuracy, lr, tokens_per_s (window positions), time,
                       padding (share of the step's target positions that hold no token),
                       since_step (loss and accuracy are Keras' running means over the steps after it),
                       process (when the training process that logged the row started: a resume's rows
                       have their own, so the time between processes is not counted as training)
    stages.csv|json    validation metrics after each stage

(file names from `kgpt2.run.Run`; loss.png, drawn from these, is kgpt2.training.run_plot's).

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

from kgpt2.io import atomic_write_text
from kgpt2.run import Run

STEP_FIELDS = ["step", "stage", "loss", "accuracy", "learning_rate", "tokens_per_s", "time", "padding", "since_step",
               "process"]
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
    atomic_write_text(run.stages_json, _stages_json(stage_metrics))
    atomic_write_text(run.stages_csv, pd.DataFrame(stage_metrics).to_csv(index=False))


def stage_table_behind(run_dir, stage_metrics: list) -> bool:
    """Whether the run's stages.json is other than `write_stage_table` writes for `stage_metrics` (a kill came
    between a checkpoint and its table), or unreadable. Compared as text: a NaN row never equals itself parsed."""
    try:
        return Run(run_dir).stages_json.read_text(encoding="utf-8") != _stages_json(stage_metrics)
    except (OSError, ValueError):
        return True


def _stages_json(stage_metrics: list) -> str:
    return json.dumps(stage_metrics, indent=2)
