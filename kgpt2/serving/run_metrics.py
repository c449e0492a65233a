"""The demo's metrics panel of a run, read from its folder: a summary line (stages finished, evaluations, votes),
the per-stage table (stages.csv), the evaluation tables (evaluation-<split>.csv) and the two plots.

Plots are read into memory: Gradio then serves a copy, so no run file is ever exposed by path.

    >>> from kgpt2.serving.run_metrics import summary
    >>> # summary(Path("checkpoints/quickstart"), "quickstart")  # '**quickstart**: 3 stage(s) finished · ...'
"""

from __future__ import annotations

import shlex
from pathlib import Path

from kgpt2.serving.votes import VOTES_FILE, counts, read_votes


def summary(run_dir: Path, run: str) -> str:
    """One line: the stages finished, the evaluations made (or the command that makes one), the votes."""
    stages = (run_dir / "stages.csv").is_file() and len((run_dir / "stages.csv").read_text().splitlines()) - 1
    evals = sorted(p.stem.split("-", 1)[1] for p in run_dir.glob("evaluation-*.csv"))
    c = counts(read_votes(run_dir / VOTES_FILE))
    evaluate = f"kgpt2 evaluate --run {shlex.quote(str(run_dir))}"
    return (f"**{run}**: {stages or 0} stage(s) finished · evaluation: "
            f"{', '.join(evals) if evals else f'none yet (`{evaluate}`)'} · "
            f"votes: {sum(c.values())} (A {c['a']}, B {c['b']}, tie {c['tie']}, both bad {c['both_bad']}, "
            f"good answer {c['up']}, bad answer {c['down']})")


def metrics(run_dir: Path, run: str):
    """(summary, per-stage table, evaluation table, training plot, evaluation plot) of the run in `run_dir`."""
    import pandas as pd

    stages = (pd.read_csv(run_dir / "stages.csv") if (run_dir / "stages.csv").is_file()
              else pd.DataFrame(columns=["stage", "loss", "accuracy", "perplexity"]))
    evals = [pd.read_csv(p) for p in sorted(run_dir.glob("evaluation-*.csv"))]
    evaluation = (pd.concat(evals, ignore_index=True) if evals
                  else pd.DataFrame(columns=["model", "loss", "accuracy", "perplexity"]))
    plots = [run_dir / "evaluation-test.png", run_dir / "evaluation-validation.png",
             *sorted(run_dir.glob("evaluation-*.png"))]
    return (summary(run_dir, run), stages.round(4), evaluation.round(4), image(run_dir / "loss.png"),
            image(next((p for p in plots if p.is_file()), None)))


def image(path):
    """A PNG read into memory (None when there is none)."""
    if path is None or not Path(path).is_file():
        return None
    from PIL import Image

    with Image.open(path) as im:
        return im.copy()
