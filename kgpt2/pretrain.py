"""How a from-scratch run went (`kgpt2 pretrain summary`): its speed and its best loss.

The other parts of pre-training have their own modules: `kgpt2.tokenizer_training`
(`kgpt2 tokenizer train`) and `kgpt2.model.scratch` (`kgpt2 pretrain init`, and the
`model.preset = "scratch"` base the trainer makes).

    >>> from kgpt2.pretrain import run_summary
    >>> run_summary("no-such-run")
    Traceback (most recent call last):
    kgpt2.errors.UserError: 'no-such-run' is not a kgpt2 run directory (no config.json); train one first
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np

from kgpt2.errors import UserError
from kgpt2.run import Run, load_run_config
from kgpt2.training.periodic_eval import read_best, read_evals
from kgpt2.training.run_logs import per_step_loss, read_steps


def run_summary(run_dir) -> dict:
    """Speed and loss of a run from its logs: what docs/benchmarks.md reports.

    logs/steps.csv has one row per executed call of the train function (one
    step, or `train.steps_per_execution` steps), stamped when its loss
    reached the host. From it:
    - `ms_per_step_median` / `_p90`: per-step time of each row (the time
      since the row before it, per step) after the first `warm` steps, rows
      that ran an evaluation or a checkpoint excluded (steady state; the same
      windows benchmarks/shakespeare_vs_nanogpt.py times nanoGPT by);
    - `first_execution_s`: the first row, XLA compilation included;
    - `ms_per_step_wall`: training wall time from the first to the last row of each process
      (fit restarts at epoch ends included, evaluation time and the time between processes excluded) per step;
    - `final_train_loss`: the training loss of the last steps (`final_train_steps`), from the same rows;
    - best and final validation loss and their steps, from logs/evals.csv, or
      from the validation after each stage (stages.json) in a run without `train.eval_every`.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, checkpoint_hint="")  # summary reads the whole run: no checkpoint to pick
    steps, evals = _read_logs(run_dir)
    if steps.empty:
        if Run(run_dir).is_align():
            raise UserError(f"run '{run_dir}' is an align run, which logs no training steps: its numbers are in "
                            f"{run_dir / 'align.json'} (and `kgpt2 evaluate --run {shlex.quote(str(run_dir))} "
                            "--checkpoint all`)")
        raise UserError(f"run '{run_dir}' has no logged steps yet")
    step_ids = steps["step"].to_numpy(dtype=np.int64)
    ran = np.diff(step_ids, prepend=step_ids[0] - (step_ids[0] if len(step_ids) == 1 else step_ids[1] - step_ids[0]))
    ran[0] = max(1, min(ran[0], step_ids[0]))  # the first row: steps since the run (re)started
    summary = {"run": str(run_dir), "steps": int(step_ids[-1]),
               **_timing(cfg, steps, evals, step_ids, ran), **_train_loss(steps, step_ids, ran)}
    summary.update(_val_losses(run_dir, evals))
    best = read_best(run_dir)
    if best:
        summary["best_checkpoint"] = best.get("id")
    return summary


def _read_logs(run_dir: Path):
    """logs/steps.csv and logs/evals.csv; a damaged or foreign one is one sentence, not pandas' traceback."""
    import pandas as pd

    tables = []
    for read, name, columns in ((read_steps, "steps.csv", ("step", "time", "tokens_per_s", "loss")),
                                (read_evals, "evals.csv", ("step",))):
        try:
            table = read(run_dir)
        except pd.errors.EmptyDataError:  # created, killed before its header was written: nothing logged
            table = pd.DataFrame(columns=columns)
        except KeyError as e:  # read_steps sorts by step
            raise UserError(f"run '{run_dir}': logs/{name} has no {e.args[0]} column; was it edited?") from None
        except (ValueError, UnicodeDecodeError) as e:  # pandas' parser errors are ValueErrors
            raise UserError(f"run '{run_dir}': logs/{name} does not read as a table ({e}); was it edited?") from None
        missing = [c for c in columns if c not in table]
        if missing:
            raise UserError(f"run '{run_dir}': logs/{name} has no {', '.join(missing)} "
                            f"column{'s' if len(missing) > 1 else ''}; was it edited?")
        tables.append(table)
    return tables


def _timing(cfg, steps, evals, step_ids: np.ndarray, ran: np.ndarray) -> dict:
    """The speed figures of `run_summary`; `ran`: the steps each row of the step log stands for."""
    tokens_per_step = cfg.train.batch_size * cfg.data.sequence_length
    per_step = tokens_per_step / steps["tokens_per_s"].to_numpy(dtype=float)  # the first row: compile included
    times = steps["time"].to_numpy(dtype=float)
    row_s = np.diff(times, prepend=np.nan) / ran  # (the tokens_per_s column is a mean since the fit call began)
    eval_steps = sorted(int(s) for s in evals["step"]) if not evals.empty else []
    every = cfg.train.checkpoint_every
    breaks = eval_steps + (list(range(every, int(step_ids[-1]) + 1, every)) if every else [])
    warm = min(50, max(1, int(step_ids[-1]) // 10))
    # an evaluation or a checkpoint after step e lies between rows lo and hi when lo <= e < hi (a new `fit` too)
    had_break = np.array([any(lo <= e < hi for e in breaks) for lo, hi in zip(step_ids - ran, step_ids)])
    steady = row_s[(step_ids - ran >= warm) & ~had_break & np.isfinite(row_s)]
    eval_seconds = float(evals["eval_seconds"].sum()) if not evals.empty else 0.0
    wall, wall_steps = _wall_time(steps, evals, step_ids, times)
    return {
        "tokens_per_step": tokens_per_step, "steps_per_execution": cfg.train.steps_per_execution,
        "first_execution_s": round(float(per_step[0] * ran[0]), 3),
        "ms_per_step_median": round(1000 * float(np.median(steady)), 3) if len(steady) else None,
        "ms_per_step_p90": round(1000 * float(np.percentile(steady, 90)), 3) if len(steady) else None,
        "ms_per_step_wall": round(1000 * wall / max(1, wall_steps), 3),
        "evaluations": len(evals), "eval_seconds": round(eval_seconds, 2),
    }


def _wall_time(steps, evals, step_ids: np.ndarray, times: np.ndarray) -> tuple[float, int]:
    """(seconds, steps) of training wall time, evaluations taken out: from the first to the last row of each
    process that logged rows (`process`), so the hours a disconnected Colab was away, and each resume's start-up
    and compile, are not counted. Rows of an older kgpt2 (no `process`) count as one process."""
    process = steps["process"].astype(str).to_numpy() if "process" in steps else np.zeros(len(steps), str)
    starts = np.flatnonzero(np.r_[True, process[1:] != process[:-1]])
    seconds, count = 0.0, 0
    for lo, hi in zip(starts, np.r_[starts[1:], len(steps)] - 1):
        inside = (evals["step"] >= step_ids[lo]) & (evals["step"] < step_ids[hi]) if not evals.empty else []
        seconds += times[hi] - times[lo] - (float(evals.loc[inside, "eval_seconds"].sum()) if len(inside) else 0.0)
        count += int(step_ids[hi] - step_ids[lo])
    return seconds, count


def _train_loss(steps, step_ids: np.ndarray, ran: np.ndarray) -> dict:
    """The mean training loss of the last steps of the last stage: a tenth of the run, 1 to 50 steps (one
    batch's loss is noisy; an earlier stage may train on other data)."""
    loss = steps["loss"].astype(float)  # older logs (no since_step): the running mean as logged
    if "since_step" in steps:
        loss = per_step_loss(steps).fillna(loss)
    loss = loss.to_numpy(dtype=float)
    window = min(50, max(1, int(step_ids[-1]) // 10))
    last = step_ids > step_ids[-1] - window  # the final row always, however many steps it stands for
    if "stage" in steps:
        last &= steps["stage"].to_numpy() == steps["stage"].iloc[-1]
    last &= np.isfinite(loss)
    if not last.any():
        return {}
    first = int((step_ids - ran)[last].min()) + 1
    return {"final_train_loss": round(float(np.average(loss[last], weights=ran[last])), 4),
            "final_train_steps": f"{first}-{int(step_ids[last][-1])}"}


def _val_losses(run_dir: Path, evals) -> dict:
    """Best and final validation loss: the periodic evaluations', else the stage ends'."""
    source = evals if not evals.empty and evals["val_loss"].notna().any() else _stage_losses(run_dir)
    if source is None:
        return {}
    i = source["val_loss"].idxmin()
    losses = {"best_val_loss": round(float(source.loc[i, "val_loss"]), 4), "best_step": int(source.loc[i, "step"]),
              "final_val_loss": round(float(source["val_loss"].iloc[-1]), 4),
              "final_step": int(source["step"].iloc[-1])}
    if source is not evals:
        losses["val_loss_from"] = "stage ends (stages.json)"
    return losses


def _stage_losses(run_dir: Path):
    """step, val_loss of the validation after each stage (stages.json); None when it holds none."""
    import pandas as pd

    try:
        stages = json.loads(Run(run_dir).stages_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet (a run stopped inside its first stage), or damaged
        return None
    rows = [(m["step"], m["loss"]) for m in stages if isinstance(m, dict) and "loss" in m and "step" in m]
    return pd.DataFrame(rows, columns=["step", "val_loss"]) if rows else None


# `run_summary`'s keys (what --json prints) as a person reads them, in words and units; pairs print on one line.
_LABELS = {
    "run": "run", "steps": "steps", "tokens_per_step": "tokens per step", "steps_per_execution": "steps per execution",
    "first_execution_s": "first execution, compile included", "ms_per_step_median": "time per step, median",
    "ms_per_step_p90": "time per step, 90th percentile", "ms_per_step_wall": "time per step, wall clock",
    "evaluations": "evaluations", "eval_seconds": "evaluation time", "final_train_loss": "final training loss",
    "best_val_loss": "best validation loss", "final_val_loss": "final validation loss",
    "val_loss_from": "validation losses from", "best_checkpoint": "best checkpoint",
}
_UNITS = {"first_execution_s": " s", "eval_seconds": " s", "ms_per_step_median": " ms", "ms_per_step_p90": " ms",
          "ms_per_step_wall": " ms"}
_WITH = {"final_train_loss": ("final_train_steps", "mean of steps {}"), "best_val_loss": ("best_step", "step {}"),
         "final_val_loss": ("final_step", "step {}")}  # the figure, and the key that says where it is from


def format_summary(summary: dict) -> str:
    """`kgpt2 pretrain summary`: one `label: value` line per figure, in words (`--json` keeps the keys).

    >>> print(format_summary({"run": "r", "steps": 5000, "tokens_per_step": 16384, "ms_per_step_median": 5.81,
    ...                       "ms_per_step_p90": None, "best_val_loss": 1.4663, "best_step": 3750}))
                               run: r
                             steps: 5,000
                   tokens per step: 16,384
             time per step, median: 5.81 ms
    time per step, 90th percentile: not measured (too few steps past the warm-up)
              best validation loss: 1.4663 (step 3,750)
    """
    labels = {k: _LABELS.get(k, k.replace("_", " ")) for k in summary if k not in {w for w, _ in _WITH.values()}}
    if "best_val_loss" not in summary:  # said, not left out: a missing line read as a bug in the summary
        labels["validation loss"] = "validation loss"
    width = max(map(len, labels.values()))
    return "\n".join(f"{label:>{width}}: {_value(summary, key)}" for key, label in labels.items())


def _value(summary: dict, key: str) -> str:
    """A figure as printed: thousands separated, with its unit and where it is from."""
    if key == "validation loss":
        return (f"none logged (no evaluation ran); `kgpt2 evaluate --run {shlex.quote(summary['run'])} "
                "--split validation` measures it")
    value = summary[key]
    if value is None:
        return "not measured (too few steps past the warm-up)"
    text = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
    text += _UNITS.get(key, "")
    if key in _WITH and summary.get(_WITH[key][0]) is not None:
        where = summary[_WITH[key][0]]
        text += f" ({_WITH[key][1].format(f'{where:,}' if isinstance(where, int) else where)})"
    return text
