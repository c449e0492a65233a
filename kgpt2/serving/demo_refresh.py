"""The demo's refresh: the runs and checkpoints on disk now, where each model picker goes, and what a moved pick clears.

While a run trains, its newest checkpoint changes under the page. A picker that showed its run's latest checkpoint
when the page last listed it (the user took the newest, not that step) follows the new latest; one set to an older
checkpoint, or to the base, keeps it. A pick that is gone (retention removed it) falls back to the latest. Which
checkpoint was the latest at the last listing is the page's state (`listed`, per side); a pick that moved clears the
shown answers and their votes, as a picker the user changes does, in the same event: the page's button and an API
client's `/refresh` alike (a second, chained event runs for the page only).

    >>> follow("ckpt-450", ["base", "ckpt-400", "ckpt-450", "ckpt-550"], listed_latest="ckpt-450")
    'ckpt-550'
    >>> follow("ckpt-400", ["base", "ckpt-400", "ckpt-450", "ckpt-550"], listed_latest="ckpt-450")
    'ckpt-400'
"""

from __future__ import annotations

import gradio as gr

from kgpt2.errors import UserError
from kgpt2.run import BASE
from kgpt2.serving import run_metrics

SIDES = ("a", "b")


def newest(ids: list[str]) -> str | None:
    """The newest checkpoint id of a picker's ids (oldest first), None when the run has none (the base is never
    the latest: the left picker starts on it by choice)."""
    return next((i for i in reversed(ids) if i != BASE), None)


def follow(ckpt, ids: list[str], listed_latest: str | None):
    """Where a pick goes at a refresh: the new latest when it was the latest at the last listing, the latest when
    it is gone, else where it is."""
    if ckpt not in ids:
        return ids[-1] if ids else None
    if ckpt == listed_latest:
        return newest(ids) or ckpt
    return ckpt


def listed_state(run, ids: list[str]) -> tuple:
    """A side's entry in the page's `listed` state: the run and its latest checkpoint as listed now."""
    return run, newest(ids)


def refresh(demo, picks: dict, listed: dict | None):
    """(run A, model A, run B, model B, the left run's metrics..., the new `listed` state, then the shown outputs as
    `moved` leaves them) for `picks` ({side: (run, checkpoint)} as the page shows them). `listed` None (a caller
    without the page's state): no pick follows, a gone one still falls back."""
    runs = demo.pool.runs()
    out, first, state = [], None, {"moved": {}}
    for side in SIDES:
        run, ckpt = picks[side]
        run = run if run in runs else (demo.run if demo.run in runs else (runs[0] if runs else None))
        first = first or run
        choices = demo.pool.checkpoints(run) if run else []
        ids = [c for _, c in choices]
        before = (listed or {}).get(side)
        pick = follow(ckpt, ids, before[1] if before and before[0] == run else None)
        state[side] = listed_state(run, ids)
        if (run, pick) != tuple(picks[side]) and pick is not None:
            state["moved"][side] = (run, pick, pick == state[side][1])
        out += [gr.Dropdown(choices=runs, value=run), gr.Dropdown(choices=choices, value=pick)]
    return (*out, *(demo.metrics(first) if first else no_runs()), state, *moved(demo, state))


def moved(demo, listed) -> tuple:
    """After a refresh, the shown outputs (answer A, answer B, status, model A line, model B line, match): cleared,
    with a line naming each pick the refresh moved, or left as they are when none moved."""
    moves = (listed or {}).get("moved") or {}
    if not moves:
        return (gr.skip(),) * 6
    lines = []
    for side, (run, ckpt, latest) in moves.items():
        try:
            info = demo.pool.info(run, ckpt)
        except UserError as e:
            info = f"**Error:** {e}"
        lines.append(f"{'Left' if side == 'a' else 'Right'} model is now `{run}/{ckpt}`"
                     f"{', the newest' if latest else ''} · {info}.")
    return cleared(" ".join(lines) + " Generate to compare.")


def cleared(status: str) -> tuple:
    """The shown outputs once a pick changed (a picker, the mode, a refresh): the answers, their model lines and the
    match (what a vote records) go; the status says what is picked now."""
    return "", "", status, "", "", None


def no_runs():
    """The metrics panel when the root lists no run now (the run folder moved away while the demo ran): each table
    empty under its own headers."""
    import pandas as pd

    stages = run_metrics.shown(pd.DataFrame(), run_metrics.STAGE_COLUMNS)
    return ("**No runs** under the checkpoints root now (moved or removed?): put one back or train one, then "
            "refresh.", stages, pd.DataFrame(columns=run_metrics.EVALUATION_COLUMNS), None, None)
