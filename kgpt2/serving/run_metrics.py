"""The demo's metrics panel of a run, read from its folder: a summary line (stages finished, evaluations, votes),
the per-stage table (stages.csv), the evaluation tables (evaluation-<split>.csv) and the two plots.

The stage table leads with what each stage trained (stage, step, batches, articles), then its validation, in that
order whatever order the file's columns have (they follow its first row's keys: a first stage without a validation
split put the metrics last). A value not measured (a stage without validation, the base's step) shows a dash, not
NaN, and counts stay whole numbers (42, not 42.0).

Plots are held in memory: Gradio then serves a copy, so no run file is ever exposed by path. The training plot is
drawn from the run's logs at each refresh (when they changed): loss.png is written when a stage ends, and a run
still training has logged steps past it. Nothing is written into the run folder.

    >>> from kgpt2.serving.run_metrics import stages_finished
    >>> stages_finished(1), stages_finished(3)
    ('1 stage finished', '3 stages finished')
"""

from __future__ import annotations

import io
import logging
import shlex
import threading
from pathlib import Path

from kgpt2.run import Run
from kgpt2.serving.votes import VOTES_FILE, counts, read_votes
from kgpt2.training.run_plot import run_figure

log = logging.getLogger("kgpt2")
STAGE_COLUMNS = ["stage", "step", "batches", "of_batches", "articles", "loss", "accuracy", "perplexity"]
EVALUATION_COLUMNS = ["model", "loss", "accuracy", "perplexity"]  # the headers of an empty one (an align run's differ)
COUNTS = ("stage", "step", "batches", "of_batches", "articles", "tokens", "truncated")  # whole numbers
NOT_MEASURED = "—"
_drawn: dict = {}  # run folder -> (its logs' sizes and times, the training plot drawn from them)
_drawing = threading.Lock()


def stages_finished(n: int) -> str:
    return f"{n} stage{'' if n == 1 else 's'} finished"


def summary(run_dir: Path, run: str) -> str:
    """One line: the stages finished, the evaluations made (or the command that makes one), the votes."""
    stages = (run_dir / "stages.csv").is_file() and len((run_dir / "stages.csv").read_text().splitlines()) - 1
    evals = sorted(p.stem.split("-", 1)[1] for p in run_dir.glob("evaluation-*.csv"))
    c = counts(read_votes(run_dir / VOTES_FILE))
    evaluate = f"kgpt2 evaluate --run {shlex.quote(str(run_dir))}"
    return (f"**{run}**: {stages_finished(stages or 0)} · evaluation: "
            f"{', '.join(evals) if evals else f'none yet (`{evaluate}`)'} · "
            f"votes: {sum(c.values())} (A {c['a']}, B {c['b']}, tie {c['tie']}, both bad {c['both_bad']}, "
            f"good answer {c['up']}, bad answer {c['down']})")


def metrics(run_dir: Path, run: str):
    """(summary, per-stage table, evaluation table, training plot, evaluation plot) of the run in `run_dir`."""
    import pandas as pd

    stages = pd.read_csv(run_dir / "stages.csv") if (run_dir / "stages.csv").is_file() else pd.DataFrame()
    evals = [pd.read_csv(p) for p in sorted(run_dir.glob("evaluation-*.csv"))]
    evaluation = pd.concat(evals, ignore_index=True) if evals else pd.DataFrame(columns=EVALUATION_COLUMNS)
    plots = [run_dir / "evaluation-test.png", run_dir / "evaluation-validation.png",
             *sorted(run_dir.glob("evaluation-*.png"))]
    return (summary(run_dir, run), shown(stages, STAGE_COLUMNS), shown(evaluation, ["model"]),
            training_plot(run_dir), image(next((p for p in plots if p.is_file()), None)))


def shown(table, first: list[str]):
    """`table` as the panel shows it: the `first` columns (each one, even where the file has none) then the rest
    in the file's order, numbers to 4 places, counts whole, and a dash where a value is missing.

        >>> import pandas as pd
        >>> rows = [{"loss": 3.5, "stage": 2, "step": 90}, {"stage": 1, "step": 42}]
        >>> table = shown(pd.DataFrame(rows), ["stage", "loss"])
        >>> list(table.columns), table.values.tolist()
        (['stage', 'loss', 'step'], [[2, 3.5, 90], [1, '—', 42]])
    """
    table = table.reindex(columns=[*first, *(c for c in table.columns if c not in first)]).round(4)
    table = table.astype({c: "Int64" for c in COUNTS if c in table and table[c].dropna().mod(1).eq(0).all()})
    return table.astype(object).where(table.notna(), NOT_MEASURED)


def training_plot(run_dir: Path):
    """loss.png as `kgpt2 train` draws it, from the logs as they are now (up to the newest logged step), in memory;
    drawn again only when a log changed (~0.5 s for 5,000 steps). loss.png itself when the logs cannot be read
    (a row being written, say)."""
    run = Run(run_dir)
    state = tuple(_file_state(p) for p in (run.steps_log, run.stages_json, run.evals_log))
    with _drawing:  # one drawing at a time: two refreshes of one run draw it once
        cached = _drawn.get(run.path)
        if cached is not None and cached[0] == state:
            return cached[1].copy()
        try:
            drawn = _draw(run_dir)
        except (OSError, ValueError, KeyError) as e:
            log.info("demo: the logs of %s cannot be drawn now (%s); showing its loss.png", run.path.name, e)
            return image(run.loss_plot)
        _drawn[run.path] = (state, drawn)
        return drawn and drawn.copy()


def _draw(run_dir: Path):
    fig = run_figure(run_dir)
    if fig is None:  # nothing logged yet
        return None
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)  # as kgpt2.io.save_figure saves loss.png
    return image(png)


def _file_state(path: Path) -> tuple:
    try:
        stat = path.stat()
    except OSError:  # none (yet)
        return (path.name,)
    return path.name, stat.st_mtime_ns, stat.st_size


def image(path):
    """A PNG (a path, or its bytes in a file object) read into memory (None when there is none)."""
    if path is None or (isinstance(path, (str, Path)) and not Path(path).is_file()):
        return None
    from PIL import Image

    with Image.open(path) as im:
        return im.copy()
