"""Evaluate every N steps during `fit`, and keep the best-validation checkpoint.

nanoGPT's loop: every `train.eval_every` steps (and
once before the first step) the loss on `train.eval_batches` batches of the
train and the validation split is measured with the model in inference mode
(no dropout) and appended to `logs/evals.csv`; `plot_evals` draws
`eval_loss.png` from it (the trainer calls it at each stage end).
With `train.keep_best`, each improvement of the validation loss saves a
full, resumable checkpoint and points `best.json` at it, so `best` is a
checkpoint id for evaluate, generate and the demo. Checkpoint retention never
deletes the one `best.json` names.

The trainer ends a `fit` call at every multiple of `eval_every` and calls
`after_steps` between calls, so no per-step hook holds up the training loop.
Evaluation runs on the trainer's evaluation twin (`metrics.evaluation_model`),
so the training model's own metrics are not touched. The global step is
passed to each call; nothing is shared with the trainer by reference.

    >>> import tempfile
    >>> from kgpt2.training.periodic_eval import PeriodicEval, read_best, read_evals
    >>> run_dir = tempfile.mkdtemp()
    >>> scores = {"train": {"loss": 2.0}, "validation": {"loss": 1.5}}
    >>> pe = PeriodicEval(run_dir, every=10, step=0, evaluate=scores.get)
    >>> pe.after_steps(step=10)     # a multiple of 10 was reached: one row
    >>> pe.after_steps(step=15)     # not yet the next one
    >>> read_evals(run_dir)[["step", "val_loss", "best"]].values.tolist()
    [[10.0, 1.5, 1.0]]
    >>> read_best(run_dir) is None        # keep_best is off: no best checkpoint saved
    True
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from kgpt2.io import save_figure
from kgpt2.reports import short
from kgpt2.run import Run
from kgpt2.training.run_logs import truncate_csv

log = logging.getLogger("kgpt2")

EVAL_FIELDS = ["step", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "eval_seconds", "best"]


def read_best(run_dir) -> dict | None:
    return Run(run_dir).best()


def read_evals(run_dir):
    import pandas as pd

    path = Run(run_dir).evals_log
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=EVAL_FIELDS)


class PeriodicEval:
    """Every `every` global steps: train/validation loss, and the best checkpoint.

    `evaluate(split_name) -> {"loss", "accuracy", ...}` measures one split;
    `step` is the global step training starts or resumes at. The trainer
    passes `after_steps` a `save() -> Checkpoint` bound to where it stands
    (its own save, so a best checkpoint is also a resume point).
    """

    def __init__(self, run_dir, every: int, step: int, evaluate, keep_best: bool = False):
        self.run, self.every = Run(run_dir), every
        self.evaluate, self.keep_best = evaluate, keep_best
        self.path = self.run.evals_log
        best = self.run.best()
        # A resumed run keeps the best so far, unless it is past the resume point.
        self.best = best if best and best.get("step", 0) <= step else None
        self._logged = {int(r["step"]) for r in truncate_csv(self.path, EVAL_FIELDS, step)}
        self._seen = step

    def before_training(self, step: int) -> None:
        if step == 0 and 0 not in self._logged:
            self._run(0)  # the untrained model, as nanoGPT's iteration 0

    def after_steps(self, step: int, save=None) -> None:
        """Called between fit segments with the global step reached: evaluate at each multiple of `every`."""
        before, self._seen = self._seen, step
        if step // self.every > before // self.every and step not in self._logged:
            self._run(step, save)

    def _run(self, step: int, save=None) -> None:
        t0 = time.perf_counter()
        train = self.evaluate("train")
        val = self.evaluate("validation")
        seconds = time.perf_counter() - t0
        improved = bool(val) and step > 0 and (self.best is None or val["loss"] < self.best["val_loss"])
        if improved:
            saved = self.keep_best and save is not None
            ckpt_id = save().id if saved else ""
            self.best = {"id": ckpt_id, "step": step, "val_loss": val["loss"], "train_loss": train.get("loss")}
            if saved:
                self.run.write_best(self.best)
        row = [step, _num(train.get("loss")), _num(val.get("loss")), _num(train.get("accuracy")),
               _num(val.get("accuracy")), f"{seconds:.3f}", int(improved)]
        with open(self.path, "a", newline="") as f:
            f.write(",".join(str(v) for v in row) + "\n")
        self._logged.add(step)
        log.info("step %d: train loss %s, val loss %s%s (eval %.1f s)", step, _shown(train.get("loss")),
                 _shown(val.get("loss")), " (best)" if improved else "", seconds)  # evals.csv keeps 6 decimals


def _num(value) -> str:
    return "" if value is None else f"{float(value):.6f}"


def _shown(value) -> str:
    return "none" if value is None else short(float(value))


def plot_evals(run_dir) -> Path | None:
    """eval_loss.png: train and validation loss at each evaluation, the best marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    evals = read_evals(run_dir)
    if evals.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(evals["step"], evals["train_loss"], "o-", ms=3, label="train loss")
    ax.plot(evals["step"], evals["val_loss"], "s-", ms=3, label="val loss")
    if evals["val_loss"].notna().any():  # a run without a validation split has no best
        best = evals.loc[evals["val_loss"].idxmin()]
        # Named in the legend, which stays inside the axes: a note beside the point ran off the figure when the
        # best was the last or the lowest evaluation, as it usually is.
        ax.plot([best["step"]], [best["val_loss"]], "*", ms=11, color="C3",
                label=f"best val loss {best['val_loss']:.4f} at step {int(best['step'])}")
    ax.set_xlabel("iteration (global step)")
    ax.set_ylabel("loss (nats/token)")
    gap = evals["step"].diff().median()  # NaN with a single evaluation
    ax.set_title(f"{run_dir.name}: loss every {int(gap)} steps" if gap == gap else f"{run_dir.name}: loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, Run(run_dir).eval_plot)
