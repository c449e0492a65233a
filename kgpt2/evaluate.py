"""`kgpt2 evaluate`: next-token accuracy, loss and perplexity with Keras `.evaluate`.

On an align run (`kgpt2 align`) the table is the held-out pairs' reward
accuracy, mean margin and rewards per checkpoint instead (`base`: the policy
before alignment, i.e. its cached reference log-probs), with a plot of both.

One table compares any set of models on the same split: the untrained base
(`base`), each stage's checkpoint, the latest. Padding is excluded through
sample weights; perplexity = exp(mean token loss). The same checkpoint and
split always give the same numbers (windows in order, no sampling).

    >>> from kgpt2.evaluate import evaluate_run
    >>> # evaluate_run("checkpoints/quickstart", checkpoints="all", compare_base=True)
    >>> # [{'model': 'base', 'loss': 6.93, 'accuracy': 0.002, 'perplexity': 1023.}, ...]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kgpt2.data.batches import to_dataset
from kgpt2.data.preference_pairs import read_preferences
from kgpt2.data.shards import ShardSet
from kgpt2.errors import UserError, os_error_sentence
from kgpt2.io import atomic_write_files, save_figure
from kgpt2.lock import tables_lock
from kgpt2.model.packed_attention import for_windows
from kgpt2.run import BASE, Run, build_run_model, snapshot
from kgpt2.training.checkpoint_manifest import WEIGHTS
from kgpt2.training.checkpoints import Checkpoint, CheckpointManager
from kgpt2.training.metrics import compile_lm, summarise
from kgpt2.training.preferences import (
    PolicyLogProbs,
    encode_preferences,
    predict_logprobs,
    reference_path,
    score_heldout,
    targets_for,
)
from kgpt2.training.training_data import resolve_windows
from kgpt2.training.validation import split_batches

log = logging.getLogger("kgpt2")
READS = (WEIGHTS,)  # all that scoring a checkpoint loads: a damaged optimizer state does not stop it
WHAT_CHECKPOINT_TAKES = ("a checkpoint id (ckpt-N or N), stage-N, latest, best, all (every stage end plus the "
                         "latest), base, or a comma list of them")


class EvaluationNotSaved(UserError):
    """The checkpoints were scored but the run folder refused the table (read-only, full): `rows` holds the scores."""

    def __init__(self, message: str, rows: list[dict]):
        super().__init__(message)
        self.rows = rows


def _save(run_dir, rows: list[dict], write):
    """`write()` the evaluation files under the run's table lock; an OS error keeps the scores for the caller to
    show (EvaluationNotSaved)."""
    try:
        with tables_lock(run_dir):
            return write()
    except OSError as e:
        where = OSError(e.errno, e.strerror, str(run_dir))  # the run folder, not the atomic writer's temporary name
        raise EvaluationNotSaved(os_error_sentence(where, "saving the evaluation"), rows) from None


def select_checkpoints(run_dir, which) -> list[str]:
    """The ids `which` names: `latest` (the newest checkpoint whose weights verify), `all` (every stage end
    plus the latest), `base`, `best`, `ckpt-N`, `N`, `stage-N`, or a list (or comma list) of these.

    Only the weights must verify (`READS`): a checkpoint whose optimizer state is damaged is scored, with a
    note; one whose weights are damaged, asked for by name, is refused in one sentence.
    """
    run = Run(run_dir)
    store = run.checkpoints()
    ids: dict = {}  # `stage-2,ckpt-234` may name one checkpoint twice: score it (and note its damage) once
    for name in _checkpoint_names(which):
        if name == "all":
            picked = _stage_ends_and_latest(run, store)
        else:
            picked = [BASE if name == BASE else store.get(name, only=READS) if name == "latest" else
                      run.checkpoint(name)]
        for ckpt in picked:
            if ckpt == BASE or ckpt.id not in ids:
                ids[BASE if ckpt == BASE else _readable(store, ckpt).id] = True
    return list(ids)


def _checkpoint_names(which) -> list[str]:
    """`which` as a list of names; none at all (`--checkpoint ,`, an empty string) is the user's mistake."""
    if which is None:
        return ["latest"]
    names = [str(w).strip() for w in (which if isinstance(which, (list, tuple)) else str(which).split(","))]
    if not any(names):
        raise UserError(f"--checkpoint {which!r} names no checkpoint; it takes {WHAT_CHECKPOINT_TAKES}")
    return [n for n in names if n]


def _stage_ends_and_latest(run: Run, store: CheckpointManager) -> list[Checkpoint]:
    """What `all` means: every stage end, then the newest checkpoint if it is none (both: weights verified)."""
    ckpts = store.intact(only=READS)  # a damaged one is named in one line and skipped
    if not ckpts:
        raise UserError(f"run '{run.path}' has no checkpoints yet" if not store.list() else
                        f"every checkpoint of run '{run.path}' is damaged (see the lines above)")
    chosen = [c for c in ckpts if c.state.get("stage_end")]
    return chosen + ([ckpts[-1]] if ckpts[-1] not in chosen else [])


def _readable(store: CheckpointManager, ckpt: Checkpoint) -> Checkpoint:
    """`ckpt` when its weights verify (one note when another of its files is damaged); else one sentence."""
    why = store.damage(ckpt, READS)
    if why is not None:
        raise UserError(f"checkpoint {ckpt.path} is damaged ({why}); choose another checkpoint")
    other = store.damage(ckpt)
    if other is not None:
        log.warning("checkpoint %s is damaged (%s) but its weights verify, so it is evaluated (training cannot "
                    "resume from it)", ckpt.path, other)
    return ckpt


def evaluate_run(run_dir, checkpoints="latest", split: str = "test", compare_base: bool = False,
                 max_batches: int | None = None, batch_size: int | None = None, save: bool = True,
                 shards: str | None = None) -> list[dict]:
    """Evaluate checkpoints of a run on one split; return one row per model (`shards`: where they are now)."""
    if max_batches is not None and max_batches < 1:
        raise UserError(f"max_batches must be at least 1 (None: the whole split); got {max_batches}")
    run_dir, run = Path(run_dir), Run(run_dir)
    cfg = run.config()
    if shards:
        cfg.data.shards = str(shards)
    elif not Path(cfg.data.shards).is_dir():  # shards live outside runs: a moved run may not find them
        raise UserError(f"run '{run_dir}' cannot find its shards at '{cfg.data.shards}'; "
                        "pass --shards DIR (the folder `kgpt2 prepare` wrote)")
    ids = select_checkpoints(run_dir, checkpoints)
    if compare_base and BASE not in ids:
        ids = [BASE] + ids
    if run.is_align() and not shards:  # with shards: next-token metrics, what aligning cost the language model
        if max_batches is not None:
            log.warning("an align run is scored on all its held-out preference pairs: --max-batches applies to "
                        "next-token evaluation on shards (--shards DIR)")
        return evaluate_alignment(run, cfg, ids, batch_size, save)
    shards = ShardSet(cfg.data.shards)
    cfg = resolve_windows(cfg, shards.manifest)  # a run's config.json names its windows; "auto" only from older files
    data = shards.split(split)
    if data.num_articles == 0:
        others = [n for n, info in shards.manifest["splits"].items() if n != split and info["num_articles"]
                  and n != "train"]
        raise UserError(f"split '{split}' of '{cfg.data.shards}' holds no articles"
                        + (f"; --split {others[0]} scores the held-out articles it has" if others else ""))
    model, tokenizer = build_run_model(cfg)
    shards.check_tokenizer(tokenizer)
    scorer = compile_lm(for_windows(model, cfg.data.windows))  # packed examples: scored packed, each on its own
    base = snapshot(model)
    # The same batches as training's own validation: instruction shards keep
    # their response-only loss mask here too.
    source = split_batches(cfg, data, max_batches, batch_size)
    rows = []
    ckpts = {c.id: c for c in run.checkpoints().list()}  # one listing for all rows
    tokens = source.scored_tokens()
    for ckpt_id in ids:
        if ckpt_id == BASE:
            run.restore(model, BASE, base=base)
        elif not restore_if_present(model, ckpts, ckpt_id):
            continue
        logs = scorer.evaluate(to_dataset(source), verbose=0, return_dict=True)
        row = {"model": ckpt_id, **summarise(logs), "split": split, "tokens": tokens,
               "shards": shards.manifest["content_hash"]}  # which data: a continued run may have new shards
        if ckpt_id != BASE:
            row.update(step=ckpts[ckpt_id].state["step"], stage=ckpts[ckpt_id].stage_number)
        rows.append(row)
    if not rows:
        raise UserError(f"every checkpoint of '{run_dir}' chosen to evaluate was removed meanwhile; run it again")
    if save:
        _report_kept(_save(run_dir, rows, lambda: save_table(run_dir, rows, split)), rows)
    return rows


def _report_kept(table: list[dict], rows: list[dict]) -> None:
    kept = [r["model"] for r in table if r not in rows]
    if kept:
        log.info("the saved table also keeps %s, scored earlier on the same data", ", ".join(kept))


def restore_if_present(model, ckpts: dict, ckpt_id: str) -> bool:
    """Load checkpoint `ckpt_id` of the listing `ckpts`; False (and one warning line) when it no longer exists.

    A run may be evaluated while `kgpt2 train` still writes it, and its retention removes older periodic
    checkpoints (renamed aside, then deleted): one listed a moment ago can be gone before, or while, it loads.
    """
    ckpt = ckpts.get(ckpt_id)
    if ckpt is not None:
        try:
            CheckpointManager.restore(model, ckpt, only=READS)
            return True
        except (UserError, OSError):
            if ckpt.path.is_dir():
                raise  # still there: damaged, unreadable - its own sentence
    log.warning("%s was removed while this evaluation ran (a training run keeps only its newest checkpoints); "
                "skipped", ckpt_id)
    return False


def evaluate_alignment(run: Run, cfg, ids: list[str], batch_size: int | None = None, save: bool = True) -> list[dict]:
    """Held-out reward accuracy and margins of an align run's checkpoints (table `evaluation-preferences.*`)."""
    import numpy as np

    path = reference_path(run.path)
    if not path.is_file():
        raise UserError(f"align run '{run.path}' has no {path.name} (its reference log-probs); run `kgpt2 align` on it")
    a = cfg.align
    pairs, unpaired = read_preferences(a.data, a.template)
    model, tokenizer = build_run_model(cfg)
    rows = encode_preferences(cfg, pairs, unpaired, tokenizer)
    held_x = rows.held_x
    with np.load(path) as cached:
        reference = cached["heldout"]
    if len(reference) != len(held_x["token_ids"]):
        raise UserError(f"the preference files of '{run.path}' changed since it was aligned ({a.data})")
    y_true = targets_for(reference, held_x, rows.held_labels)
    scorer, bs = PolicyLogProbs(model), batch_size or cfg.train.batch_size
    ckpts = {c.id: c for c in run.checkpoints().list()}
    options = {"label_smoothing": a.label_smoothing, "simpo_gamma": a.simpo_gamma}
    table = []
    for ckpt_id in ids:
        if ckpt_id == BASE:
            y_pred = y_true[:, :2]  # the policy before alignment is the reference
        elif restore_if_present(model, ckpts, ckpt_id):
            y_pred = predict_logprobs(scorer, held_x, bs)
        else:
            continue
        row = {"model": ckpt_id, **score_heldout(y_true, y_pred, a.loss, a.beta, **options), "split": "preferences"}
        if ckpt_id != BASE:
            row["step"] = ckpts[ckpt_id].state["step"]
        table.append(row | {"margins": _margins(y_true, y_pred, a.loss)})
    rows = [{k: v for k, v in r.items() if k != "margins"} for r in table]
    if save:
        _report_kept(_save(run.path, rows, lambda: save_alignment_table(run, table)), rows)
    return rows


def _margins(y_true, y_pred, loss: str):
    """Per held-out row: chosen - rejected log-ratio (KTO: the example's log-ratio, signed by its label)."""
    import numpy as np

    ratio = y_pred[:, :2] - y_true[:, :2]
    return np.where(y_true[:, 4] > 0.5, ratio[:, 0], -ratio[:, 0]) if loss == "kto" else ratio[:, 0] - ratio[:, 1]


def save_alignment_table(run: Run, rows: list[dict]) -> list[dict]:
    """evaluation-preferences.json/.csv (merged as `save_table` does), a PNG: reward accuracy, the last's margins."""
    table = _write_table(run.evaluation_table("preferences", "json"),
                         [{k: v for k, v in r.items() if k != "margins"} for r in rows])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.bar([r["model"] for r in table], [r["reward_accuracy"] for r in table], color="C0")
    a1.axhline(0.5, color="grey", lw=0.8, ls="--")
    a1.set_title("held-out reward accuracy")
    a1.tick_params(axis="x", rotation=30)
    a2.hist(rows[-1]["margins"], bins=40, color="C2")
    a2.axvline(0.0, color="grey", lw=0.8)
    a2.set_title(f"{rows[-1]['model']}: log-ratio margin per held-out row")
    fig.tight_layout()
    save_figure(fig, run.evaluation_table("preferences", "png"))
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
    a1.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    a2.bar_label(a2.bar(names, [r["perplexity"] for r in rows], color="C1"), fmt="{:,.1f}", fontsize=8)
    a2.set_yscale("log")
    a2.set_title(f"perplexity ({split}, log scale; lower is better)")
    for ax in (a1, a2):
        ax.margins(y=0.12)  # room for the value labels
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    save_figure(fig, run.evaluation_table(split, "png"))
    return rows


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
