"""`kgpt2 evaluate`'s time left covers every model the command scores, and a long one says how to shorten it."""

import itertools
import re

import pytest

pytestmark = pytest.mark.backend  # scores a tiny model


def test_time_left_covers_every_model_and_says_once_how_max_batches_shortens_it(unevaluated_run, kgpt2_cli,
                                                                                   monkeypatch):
    """`--checkpoint all --compare base` scored three models, and each progress line's "about N min left" was the
    time left of the model being scored: the first model's lines promised a third of the real wait. Now they count
    the models still to come, and the first line of a long evaluation names the --max-batches that would make the
    whole command take about a minute (once, so the lines that follow stay short)."""
    from kgpt2 import evaluate
    from kgpt2.cli_parser import build_parser
    from kgpt2.training import progress_lines

    # A slow machine: 60 s between any two looks at the clock. On JAX, Keras calls the callback from worker
    # threads, so looks per batch vary (10 s a look made the first estimate ~1 min in CI, under the 2 min hint);
    # at 60 s even 2.5 batches a look leave 15 batches at ~6 min, long from the first line.
    ticks = itertools.count()

    def slow(*args, **kwargs):
        return progress_lines.ScoringProgress(*args, min_s=0.0, every_s=0.0, clock=lambda: 60.0 * next(ticks),
                                              **kwargs)

    monkeypatch.setattr(evaluate, "ScoringProgress", slow)
    r = kgpt2_cli("evaluate", "--run", unevaluated_run, "--checkpoint", "all", "--compare", "base",
                  "--split", "train", "--max-batches", "6")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if ": batch " in line]
    models = re.findall(r"kgpt2: scoring (\S+) \(\d of 3\)", r.stderr)
    assert len(models) == 3 and models[0] == "base", r.stderr
    for position, model in enumerate(models, 1):
        mine = [line for line in lines if line.startswith(f"kgpt2: scoring {model}: ")]
        assert mine, r.stderr
        later = {1: " for this and 2 more models", 2: " for this and 1 more model", 3: ""}[position]
        for line in mine:
            assert re.fullmatch(rf"kgpt2: scoring {model}: batch \d of 6 \(\d+%\), about [^;]+ left{later}"
                                r"(; --max-batches \d+ would score each model's first \d+ batches \(about .+ in all\))?",
                                line), line
    hints = [line for line in lines if "--max-batches" in line]
    assert hints == lines[:1], r.stderr  # the first line: the whole wait is long
    n = int(re.search(r"--max-batches (\d+)", hints[0]).group(1))
    assert 1 <= n < 6
    assert build_parser().parse_args(["evaluate", "--run", "r", "--max-batches", str(n)]).max_batches == n


def test_one_model_left_says_no_other_models():
    """The last (or only) model's lines say its own time; a long single-model evaluation hints without "in all"."""
    from kgpt2.evaluate import TimeLeft

    alone = TimeLeft(1, 600).after(1)
    assert alone(300.0, 1.0) == "about 5 min left; --max-batches 60 would score the first 60 batches (about 1 min)"
    assert alone(290.0, 1.0) == "about 4 min left"  # said once
    assert TimeLeft(3, 600).after(3)(30.0, 1.0) == "about < 1 min left"
    assert TimeLeft(3, 600).after(2)(30.0, 10.0) == "about 1 min left for this and 1 more model"
