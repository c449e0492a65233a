"""The evaluation tables a run keeps: evaluation-<split>.json/.csv and a PNG per split, merged across calls.

`kgpt2 evaluate` scores models (kgpt2.evaluate); this module keeps what it scored. One table compares models
scored on the same data (shards, split, token count): a later call adds its rows to the saved ones, and rows
scored on other data are set aside in evaluation-<split>.earlier.json until that data is scored again. Every
write holds the run's table lock and is atomic (a full disk leaves the old table whole).

    >>> from kgpt2.evaluation_table import format_table
    >>> print(format_table([{"model": "base", "loss": 2.0, "accuracy": 0.25, "perplexity": 7.389}]))
    model   loss  accuracy  perplexity
     base 2.0000    0.2500      7.3890
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kgpt2.errors import UserError, os_error_sentence
from kgpt2.io import atomic_write_files, save_figure
from kgpt2.lock import tables_lock
from kgpt2.run import BASE, Run

log = logging.getLogger("kgpt2")


class EvaluationNotSaved(UserError):
    """The checkpoints were scored but the run folder refused the table (read-only, full): `rows` holds the scores."""

    def __init__(self, message: str, rows: list[dict]):
        super().__init__(message)
        self.rows = rows


def save_evaluation(run_dir, rows: list[dict], write) -> list[dict]:
    """`write()` the evaluation files under the run's table lock (returns the table it saved, and says which
    earlier rows it keeps); an OS error keeps the scores for the caller to show (EvaluationNotSaved)."""
    try:
        with tables_lock(run_dir):
            table = write()
    except OSError as e:
        where = OSError(e.errno, e.strerror, str(run_dir))  # the run folder, not the atomic writer's temporary name
        raise EvaluationNotSaved(os_error_sentence(where, "saving the evaluation"), rows) from None
    kept = [r["model"] for r in table if r not in rows]
    if kept:
        log.info("the saved table also keeps %s, scored earlier on the same data", ", ".join(kept))
    return table


def save_alignment_table(run: Run, rows: list[dict]) -> list[dict]:
    """evaluation-preferences.json/.csv (merged as `save_table` does), a PNG: reward accuracy, the last's margins."""
    table = _write_table(run.evaluation_table("preferences", "json"),
                         [{k: v for k, v in r.items() if k != "margins"} for r in rows])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.bar_label(a1.bar([r["model"] for r in table], [r["reward_accuracy"] for r in table], color="C0"),
                 labels=[_reward_accuracy_label(r) for r in table], fontsize=8)
    a1.axhline(0.5, color="grey", lw=0.8, ls="--")
    a1.set_title("held-out reward accuracy")
    percent_axis(a1, "reward accuracy")
    a1.margins(y=0.12)  # room for the value labels
    _bar_names(a1, [r["model"] for r in table])
    _room_around_few_bars(a1, len(table))
    _margin_histogram(a2, rows[-1])
    fig.tight_layout()
    _save_plot(fig, run.evaluation_table("preferences", "png"))
    return table


def save_table(run_dir: Path, rows: list[dict], split: str) -> list[dict]:
    """evaluation-<split>.json/.csv and a PNG of accuracy and perplexity per model; returns the table saved.

    The table keeps earlier rows of other models scored on the same data (the
    same shards, split and tokens: `evaluate --checkpoint base` after
    `--checkpoint all` adds the base row instead of replacing the table); rows
    scored on other batches or other shards would not compare, so they leave the
    table for evaluation-<split>.earlier.json, with one line naming them, and
    return when the same data is scored again (`set_aside`).
    """
    run = Run(run_dir)
    rows = _write_table(run.evaluation_table(split, "json"), rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['model']}\nstage {r['stage']}" if r.get("stage") is not None else r["model"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.bar_label(a1.bar(names, [r["accuracy"] for r in rows], color="C0"), fmt="{:.1%}", fontsize=8)
    a1.set_title(f"next-token accuracy ({split}, {rows[0]['tokens']:,} tokens)")
    percent_axis(a1, "next-token accuracy")
    perplexities = [r["perplexity"] for r in rows]
    a2.bar_label(a2.bar(names, perplexities, color="C1"), fmt="{:,.1f}", fontsize=8)
    log_scale = perplexity_on_log_scale(perplexities)
    if log_scale:
        a2.set_yscale("log")
        a2.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")  # 1,000 rather than 10^3
    a2.set_ylabel("perplexity")
    a2.set_title(f"perplexity ({split}{', log scale' if log_scale else ''}; lower is better)")
    for ax in (a1, a2):
        ax.margins(y=0.12)  # room for the value labels
        _bar_names(ax, names)
        _room_around_few_bars(ax, len(rows))
    fig.tight_layout()
    _save_plot(fig, run.evaluation_table(split, "png"))
    return rows


def percent_axis(ax, label: str) -> None:
    """Accuracies are fractions in the tables (machine data) and percent in every plot; the axis label says so."""
    ax.yaxis.set_major_formatter(percent_ticks())
    ax.set_ylabel(f"{label} (%)")


def percent_ticks():
    """A formatter of fractions as percent ticks with the decimals the ticks need: 6%, 3.5%, 3.52%.

    matplotlib's PercentFormatter picks decimals from the axis span alone and wrote 6.0% on a span of 9 points
    and 3.500% on a narrow one; here the tick positions set them, and no tick keeps a trailing zero."""
    from matplotlib.ticker import PercentFormatter

    class PercentTicks(PercentFormatter):
        def set_locs(self, locs):
            super().set_locs(locs)
            self.decimals = tick_decimals([self.convert_to_pct(v) for v in locs]) if len(locs) else None

        def format_pct(self, x, display_range):
            text = super().format_pct(x, display_range)
            number = text[:len(text) - len(self.symbol)]
            return (number.rstrip("0").rstrip(".") if "." in number else number) + self.symbol

    return PercentTicks(xmax=1)


def tick_decimals(percents: list[float]) -> int:
    """The fewest decimals (at most 6) that write every tick exactly, float noise aside.

    >>> [tick_decimals(t) for t in ([0, 2, 4], [3.45, 3.5, 3.55], [3.5, 3.52, 3.54], [2.5, 5, 7.5], [100 * 0.035])]
    [0, 2, 2, 1, 1]
    """
    for decimals in range(6):
        if all(abs(p - round(p, decimals)) < 1e-7 for p in percents):
            return decimals
    return 6


def perplexity_on_log_scale(perplexities: list[float]) -> bool:
    """A log axis only where the values span a factor of 10 or more (an untrained base beside trained models):
    on a single bar or a small range it drew a bar of arbitrary height between sparse powers of ten.

    >>> [perplexity_on_log_scale(p) for p in ([369.4], [30.2, 18.5], [1029.8, 138.2], [50257.0, 40.0])]
    [False, False, False, True]
    """
    return len(perplexities) > 1 and min(perplexities) > 0 and max(perplexities) / min(perplexities) >= 10


def _reward_accuracy_label(row: dict) -> str:
    """A bar's value; the reference model itself (its rewards are 0 by definition, so no margin is > 0) says so,
    where a bare 0.0% read as a model that always prefers the rejected answer."""
    if row.get("chosen_reward") == 0 and row.get("rejected_reward") == 0:
        return f"{row['reward_accuracy']:.1%} (the reference:\nevery margin is 0)"
    return f"{row['reward_accuracy']:.1%}"


def _margin_histogram(ax, row: dict) -> None:
    """The held-out margins of one model: right of 0 the model prefers the chosen answer (KTO: the label's)."""
    kto = "ranking_accuracy" in row  # KTO's rows are single examples, their log-ratio signed by the label
    ax.hist(row["margins"], bins=min(40, max(8, len(row["margins"]) // 4)), color="C2")  # 40 bins of 38 pairs: gaps
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("log-ratio vs the reference, signed by the label (nats)" if kto else
                  "log-ratio margin vs the reference, chosen - rejected (nats)")
    ax.set_ylabel("held-out examples" if kto else "held-out pairs")
    ax.set_title(f"{row['model']}: margins (> 0: prefers the {'label' if kto else 'chosen'})")


def _bar_names(ax, names: list[str]) -> None:
    """The bars' names level when they fit under their bars, else slanted with their ends at the bars: a slanted
    two-line name centred on its bar sat beside it."""
    per_bar = ax.get_window_extent().width * 72 / ax.figure.dpi / max(len(names), 3)  # points
    widest = max(len(line) for name in names for line in name.split("\n")) * 8 * 0.6  # 8-point text, ~0.6 em a letter
    slant = widest > 0.85 * per_bar
    ax.set_xticks(range(len(names)), names, fontsize=8, rotation=30 if slant else 0, ha="right" if slant else "center",
                  rotation_mode="anchor" if slant else "default")


def _room_around_few_bars(ax, count: int) -> None:
    """At least three bars' width on the axis, so one or two bars are bars, not the whole panel."""
    if count < 3:
        middle = (count - 1) / 2
        ax.set_xlim(middle - 1.5, middle + 1.5)


def _save_plot(fig, path: Path) -> None:
    """The table's PNG; written after the table, so a disk that fills in between costs the picture only."""
    try:
        save_figure(fig, path)
    except OSError as e:
        log.warning("%s; the table (%s, .csv) was saved", os_error_sentence(e, "saving the evaluation plot"),
                    path.with_suffix(".json").name)


def _write_table(saved: Path, rows: list[dict]) -> list[dict]:
    """`rows` merged into the saved table (`merge_saved_rows`); its .json and .csv, and the rows it replaces
    (`set_aside`), written together (a full disk leaves all old); returns the table."""
    table = merge_saved_rows(saved, rows)
    replaced, earlier = set_aside(saved, table)
    atomic_write_files({saved: json.dumps(table, indent=2), saved.with_suffix(".csv"): _csv(table), **earlier})
    report_replaced(saved, replaced, rows)
    return table


def _csv(rows: list[dict]) -> str:
    """The table as CSV; step and stage stay whole numbers where the base row has none (not 7.0)."""
    import pandas as pd

    table = pd.DataFrame(rows)
    return table.astype({c: "Int64" for c in ("step", "stage") if c in table}).to_csv(index=False)


def merge_saved_rows(saved_json: Path, rows: list[dict]) -> list[dict]:
    """`rows` plus the saved rows of other models scored on the same data (`_scored_on`), from the table or else
    from the rows it set aside earlier (`set_aside`); base first, then by step.

    >>> old = [{"model": "base", "split": "test", "tokens": 8}, {"model": "ckpt-2", "split": "test", "tokens": 8, "step": 2}]
    >>> import pathlib, tempfile; f = pathlib.Path(tempfile.mkdtemp()) / "e.json"; _ = f.write_text(json.dumps(old))
    >>> [r["model"] for r in merge_saved_rows(f, [{"model": "ckpt-1", "split": "test", "tokens": 8, "step": 1}])]
    ['base', 'ckpt-1', 'ckpt-2']
    >>> [r["model"] for r in merge_saved_rows(f, [{"model": "ckpt-1", "split": "test", "tokens": 4, "step": 1}])]
    ['ckpt-1']
    """
    now = {r["model"] for r in rows}
    scored_on = {_scored_on(r) for r in rows}
    kept = {}
    for r in _read_rows(saved_json) + _read_rows(earlier_rows_path(saved_json)):  # the table's row first
        if r.get("model") not in now and _scored_on(r) in scored_on:
            kept.setdefault(r.get("model"), r)
    return sorted([*kept.values(), *rows], key=lambda r: (r["model"] != BASE, r.get("step", 0)))


def _read_rows(path: Path) -> list[dict]:
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # none yet, or not readable as a table: no rows
        return []
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def earlier_rows_path(saved_json: Path) -> Path:
    """evaluation-<split>.earlier.json: the rows that left the table because later ones were scored on other data."""
    return Path(saved_json).with_suffix(".earlier.json")


def set_aside(saved_json: Path, table: list[dict]) -> tuple[list[dict], dict]:
    """(the saved rows `table` replaces, scored on other data; {earlier_rows_path: its new text} if it changes).

    The earlier file keeps one row per model and data, the newest; a row back in `table` leaves it."""
    key = lambda r: (r.get("model"), _scored_on(r))  # noqa: E731
    seen = {key(r) for r in table}
    replaced = [r for r in _read_rows(saved_json) if key(r) not in seen]
    before = _read_rows(earlier_rows_path(saved_json))
    earlier = []
    for r in replaced + before:  # the rows replaced now are the newer ones
        if key(r) not in seen:
            seen.add(key(r))
            earlier.append(r)
    return replaced, ({earlier_rows_path(saved_json): json.dumps(earlier, indent=2)} if earlier != before else {})


def report_replaced(saved_json: Path, replaced: list[dict], rows: list[dict]) -> None:
    """One line naming the saved rows this evaluation replaced (scored on other data), and where they are kept."""
    if not replaced:
        return
    old, new = replaced[0], rows[0]  # a table holds rows of one data: the saved rows' differs from this call's
    other_shards = old.get("shards") != new.get("shards")
    on = (lambda r: f"shards {r.get('shards') or '(not recorded)'}") if other_shards else _amount
    models = ", ".join(str(r.get("model")) for r in replaced)
    log.warning("replaced %d saved row%s of %s (%s), scored on %s, with ones on %s: scores on other batches or "
                "shards do not compare; the replaced rows are kept in %s and return to the table when their data is "
                "scored again", len(replaced), "s" * (len(replaced) > 1), saved_json, models, on(old), on(new),
                earlier_rows_path(saved_json).name)


def _amount(row: dict) -> str:
    """What a row was scored on, in words: `7,410 tokens`, `64 held-out pairs`."""
    count, what = (row["tokens"], "tokens") if row.get("tokens") is not None else (row.get("pairs"), "held-out pairs")
    return f"{count:,} {what}" if isinstance(count, int) else f"{count} {what}"


def _scored_on(row: dict) -> tuple:
    """What a row was scored on: its shards, split and token count (held-out pair count on an align run)."""
    return row.get("shards"), row.get("split"), row.get("tokens"), row.get("pairs")


def format_table(rows: list[dict]) -> str:
    import pandas as pd

    cols = [c for c in ("model", "stage", "step", "loss", "accuracy", "perplexity", "tokens", "reward_accuracy",
                        "reward_margin", "chosen_reward", "rejected_reward", "pairs") if any(c in r for r in rows)]
    table = pd.DataFrame(rows)[cols]
    for c in ("stage", "step"):  # the base row has none: keep them integers, blank there
        if c in table:
            table[c] = table[c].astype("Int64").astype(str).replace("<NA>", "-")
    return table.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")
