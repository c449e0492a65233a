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
so the training model's own metrics are not touched.

    >>> from kgpt2.periodic_eval import read_evals, read_best
    >>> # read_evals("checkpoints/shakespeare-char").tail()   # step, train_loss, val_loss, ...
    >>> # read_best("checkpoints/shakespeare-char")           # {'id': 'ckpt-1750', 'val_loss': 1.46, ...}
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from kgpt2.checkpoints import atomic_write_text
from kgpt2.run_logs import truncate_csv

log = logging.getLogger("kgpt2")

BEST_FILE = "best.json"
EVAL_FIELDS = ["step", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "eval_seconds", "best"]


def read_best(run_dir) -> dict | None:
    path = Path(run_dir) / BEST_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def read_evals(run_dir):
    import pandas as pd

    path = Path(run_dir) / "logs" / "evals.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=EVAL_FIELDS)


class PeriodicEval:
    """Every `every` global steps: train/validation loss, and the best checkpoint.

    `evaluate(split_name) -> {"loss", "accuracy", ...}` measures one split;
    `save(model) -> Checkpoint` writes a checkpoint at the current cursor (the
    trainer's own save, so a best checkpoint is also a resume point).
    `cursor["step"]` must already count the steps that just ended.
    """

    def __init__(self, run_dir, every: int, cursor: dict, evaluate, save=None, keep_best: bool = False):
        self.run_dir, self.every, self.cursor = Path(run_dir), every, cursor
        self.evaluate, self.save, self.keep_best = evaluate, save, keep_best
        self.path = self.run_dir / "logs" / "evals.csv"
        best = read_best(self.run_dir)
        # A resumed run keeps the best so far, unless it is past the resume point.
        self.best = best if best and best.get("step", 0) <= cursor["step"] else None
        self._truncate_after(cursor["step"])
        self._seen = cursor["step"]

    def _truncate_after(self, step: int) -> None:
        self._logged = {int(r["step"]) for r in truncate_csv(self.path, EVAL_FIELDS, step)}

    def before_training(self, model) -> None:
        if self.cursor["step"] == 0 and 0 not in self._logged:
            self._run(model, 0)  # the untrained model, as nanoGPT's iteration 0

    def after_steps(self, model) -> None:
        """Called between fit segments: evaluate when a multiple of `every` was reached."""
        step, before = self.cursor["step"], self._seen
        self._seen = step
        if step // self.every > before // self.every and step not in self._logged:
            self._run(model, step)

    def _run(self, model, step: int) -> None:
        t0 = time.perf_counter()
        train = self.evaluate("train")
        val = self.evaluate("validation")
        seconds = time.perf_counter() - t0
        improved = bool(val) and (self.best is None or val["loss"] < self.best["val_loss"])
        if improved and self.keep_best and self.save is not None and step > 0:
            ckpt = self.save(model)
            self.best = {"id": ckpt.id, "step": step, "val_loss": val["loss"], "train_loss": train.get("loss")}
            atomic_write_text(self.run_dir / BEST_FILE, json.dumps(self.best, indent=2))
        elif improved and step > 0:
            self.best = {"id": "", "step": step, "val_loss": val["loss"], "train_loss": train.get("loss")}
        row = [step, _num(train.get("loss")), _num(val.get("loss")), _num(train.get("accuracy")),
               _num(val.get("accuracy")), f"{seconds:.3f}", int(improved and step > 0)]
        with open(self.path, "a", newline="") as f:
            f.write(",".join(str(v) for v in row) + "\n")
        self._logged.add(step)
        log.info("step %d: train loss %s, val loss %s%s (eval %.1f s)", step, _num(train.get("loss")),
                 _num(val.get("loss")), " (best)" if improved and step > 0 else "", seconds)


def _num(value) -> str:
    return "" if value is None else f"{float(value):.6f}"


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
    best = evals.loc[evals["val_loss"].idxmin()]
    ax.annotate(f"best {best['val_loss']:.4f} @ {int(best['step'])}", (best["step"], best["val_loss"]),
                textcoords="offset points", xytext=(0, -18), ha="center", fontsize=8)
    ax.set_xlabel("iteration (global step)")
    ax.set_ylabel("loss (nats/token)")
    gap = evals["step"].diff().median()  # NaN with a single evaluation
    ax.set_title(f"{run_dir.name}: loss every {int(gap)} steps" if gap == gap else f"{run_dir.name}: loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = run_dir / ".tmp-eval_loss.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    out = run_dir / "eval_loss.png"
    tmp.replace(out)
    return out
