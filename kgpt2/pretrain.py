"""How a from-scratch run went (`kgpt2 pretrain summary`): its speed and its best loss.

The other parts of pre-training have their own modules: `kgpt2.tokenizer_training`
(`kgpt2 tokenizer train`) and `kgpt2.scratch` (`kgpt2 pretrain init`, and the
`model.preset = "scratch"` base the trainer makes).

    >>> from kgpt2.pretrain import run_summary
    >>> run_summary("no-such-run")
    Traceback (most recent call last):
    kgpt2.errors.UserError: 'no-such-run' is not a kgpt2 run directory (no config.json); train one first
"""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np

from kgpt2.errors import UserError
from kgpt2.periodic_eval import read_best, read_evals
from kgpt2.run_logs import read_steps
from kgpt2.run import Run, load_run_config


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
    - `ms_per_step_wall`: training wall time from the first to the last row
      (fit restarts at epoch ends included, evaluation time excluded) per step;
    - best and final validation loss and their steps, from logs/evals.csv.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    steps, evals = read_steps(run_dir), read_evals(run_dir)
    if steps.empty:
        if Run(run_dir).is_align():
            raise UserError(f"run '{run_dir}' is an align run, which logs no training steps: its numbers are in "
                            f"{run_dir / 'align.json'} (and `kgpt2 evaluate --run {shlex.quote(str(run_dir))} "
                            "--checkpoint all`)")
        raise UserError(f"run '{run_dir}' has no logged steps yet")
    tokens_per_step = cfg.train.batch_size * cfg.data.sequence_length
    step_ids = steps["step"].to_numpy(dtype=np.int64)
    ran = np.diff(step_ids, prepend=step_ids[0] - (step_ids[0] if len(step_ids) == 1 else step_ids[1] - step_ids[0]))
    ran[0] = max(1, min(ran[0], step_ids[0]))  # the first row: steps since the run (re)started
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
    before_first = float(evals.loc[evals["step"] <= step_ids[0] - ran[0], "eval_seconds"].sum()) if eval_steps else 0.0
    wall = times[-1] - times[0] - (eval_seconds - before_first)
    summary = {
        "run": str(run_dir), "steps": int(step_ids[-1]), "tokens_per_step": tokens_per_step,
        "steps_per_execution": cfg.train.steps_per_execution,
        "first_execution_s": round(float(per_step[0] * ran[0]), 3),
        "ms_per_step_median": round(1000 * float(np.median(steady)), 3) if len(steady) else None,
        "ms_per_step_p90": round(1000 * float(np.percentile(steady, 90)), 3) if len(steady) else None,
        "ms_per_step_wall": round(1000 * float(wall) / max(1, int(step_ids[-1] - step_ids[0])), 3),
        "evaluations": len(evals), "eval_seconds": round(eval_seconds, 2),
    }
    if not evals.empty and evals["val_loss"].notna().any():
        i = evals["val_loss"].idxmin()
        summary.update(best_val_loss=round(float(evals.loc[i, "val_loss"]), 4), best_step=int(evals.loc[i, "step"]),
                       final_val_loss=round(float(evals["val_loss"].iloc[-1]), 4),
                       final_step=int(evals["step"].iloc[-1]))
    best = read_best(run_dir)
    if best:
        summary["best_checkpoint"] = best.get("id")
    return summary


def format_summary(summary: dict) -> str:
    """`kgpt2 pretrain summary`: one `name: value` line per figure."""
    return "\n".join(f"{k:>20}: {v}" for k, v in summary.items())
