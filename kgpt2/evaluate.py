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

import logging
import os
import shlex
from pathlib import Path

from kgpt2.data.batches import to_dataset
from kgpt2.data.preference_pairs import content_hash, read_preferences
from kgpt2.data.shards import ShardSet
from kgpt2.errors import UserError
from kgpt2.evaluation_table import (
    EvaluationNotSaved,
    format_table,  # noqa: F401  (kgpt2.evaluate.format_table, as notebooks import it)
    save_alignment_table,
    save_evaluation,
    save_table,
)
from kgpt2.model.models import prepare_hint
from kgpt2.model.packed_attention import for_windows
from kgpt2.run import BASE, Run, build_run_model, snapshot
from kgpt2.training.checkpoints import WEIGHTS_ONLY, Checkpoint, CheckpointManager
from kgpt2.training.metrics import compile_lm, summarise
from kgpt2.training.preferences import (
    PolicyLogProbs,
    encode_preferences,
    predict_logprobs,
    reference_path,
    score_heldout,
    targets_for,
)
from kgpt2.training.progress_lines import ScoringProgress, duration
from kgpt2.training.training_data import resolve_windows
from kgpt2.training.validation import split_batches

log = logging.getLogger("kgpt2")
READS = WEIGHTS_ONLY  # all that scoring a checkpoint loads: a damaged optimizer state does not stop it
WHAT_CHECKPOINT_TAKES = ("a checkpoint id (ckpt-N or N), stage-N, latest, best, all (every stage end plus the "
                         "latest), base, or a comma list of them")


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
        raise UserError(f"checkpoint '{ckpt.path}' is damaged ({why}); choose another checkpoint")
    other = store.damage(ckpt)
    if other is not None:
        log.warning("checkpoint '%s' is damaged (%s) but its weights verify, so it is evaluated (training cannot "
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
        cfg.data.shards = _given_shards(shards)
    elif not Path(cfg.data.shards).is_dir():  # shards live outside runs: a moved run may not find them
        raise UserError(f"run '{run_dir}' cannot find its shards at '{cfg.data.shards}'; "
                        "pass --shards DIR (the folder `kgpt2 prepare` wrote)")
    ids = select_checkpoints(run_dir, checkpoints)
    if compare_base and BASE not in ids:
        ids = [BASE] + ids
    if run.is_align() and not shards:  # with shards: next-token metrics, what aligning cost the language model
        for option, given in (("--max-batches", max_batches is not None), ("--split", split != "test")):
            if given:
                log.warning("an align run is scored on all its held-out preference pairs: %s applies to "
                            "next-token evaluation on shards (--shards DIR)", option)
        return evaluate_alignment(run, cfg, ids, batch_size, save)
    shards = ShardSet(cfg.data.shards)
    cfg = resolve_windows(cfg, shards.manifest)  # a run's config.json names its windows; "auto" only from older files
    model, tokenizer = build_run_model(cfg)
    shards.check_tokenizer(tokenizer, prepare_hint(cfg.model, f"kgpt2 evaluate --run {shlex.quote(str(run_dir))} "
                                                              "--shards NEW_SHARDS"))  # the command that fits
    data = _split_to_score(shards, split)
    scorer = compile_lm(for_windows(model, cfg.data.windows))  # packed examples: scored packed, each on its own
    base = snapshot(model)
    # The same batches as training's own validation: instruction shards keep
    # their response-only loss mask here too.
    source = split_batches(cfg, data, max_batches, batch_size)
    rows = []
    ckpts = {c.id: c for c in run.checkpoints().list()}  # one listing for all rows
    tokens = source.scored_tokens()
    time_left = TimeLeft(len(ids), len(source))
    for i, ckpt_id in enumerate(ids, 1):
        if ckpt_id == BASE:
            run.restore(model, BASE, base=base)
        elif not restore_if_present(model, ckpts, ckpt_id):
            continue
        if len(ids) > 1:  # each model can take minutes on a real split: say which one is being scored
            log.info("scoring %s (%d of %d) on %s %s tokens", ckpt_id, i, len(ids), f"{tokens:,}", split)
        logs = scorer.evaluate(to_dataset(source), verbose=0, return_dict=True,
                               callbacks=[ScoringProgress(ckpt_id, len(source), left=time_left.after(i))])
        row = {"model": ckpt_id, **summarise(logs), "split": split, "tokens": tokens,
               "shards": shards.manifest["content_hash"]}  # which data: a continued run may have new shards
        if ckpt_id != BASE:
            row.update(step=ckpts[ckpt_id].state["step"], stage=ckpts[ckpt_id].stage_number)
        rows.append(row)
    if not rows:
        raise UserError(f"every checkpoint of '{run_dir}' chosen to evaluate was removed meanwhile; run it again")
    if save:
        _save(run_dir, rows, lambda: save_table(run_dir, rows, split))
    return rows


class TimeLeft:
    """The words for the time an evaluation has left, said in its progress lines: this model's batches and every
    model's after it (at this one's pace: they are the same model on the same batches), and once, when that is
    long, the --max-batches that would make the whole command take about a minute."""

    LONG_S = 120.0

    def __init__(self, models: int, batches: int):
        self.models, self.batches, self.hinted = models, batches, False

    def after(self, position: int):
        """`left(seconds, batches_per_s)` for ScoringProgress while model `position` (from 1) is scored."""
        later = self.models - position

        def left(seconds: float, batches_per_s: float) -> str:
            seconds += later * self.batches / batches_per_s
            words = f"about {duration(seconds)} left" + (f" for this and {later} more model{'s' * (later > 1)}"
                                                          if later > 0 else "")
            if seconds <= self.LONG_S or self.hinted:
                return words
            self.hinted = True  # once a command: the lines that follow stay short
            n = max(1, int(batches_per_s * 60 / self.models))
            each = f"each model's first {n:,} batches" if self.models > 1 else f"the first {n:,} batches"
            return (f"{words}; --max-batches {n} would score {each} (about {duration(n * self.models / batches_per_s)}"
                    f"{' in all' if self.models > 1 else ''})")
        return left


def _given_shards(shards) -> str:
    """`--shards` as a path, or the sentence for what it cannot be: nothing there, or a file (say, the corpus or the
    preference file itself); a folder that is no shard set is ShardSet's to name."""
    path = Path(shards)
    if not path.exists():
        raise UserError(f"--shards '{shards}' does not exist; it takes the folder `kgpt2 prepare --out` wrote")
    if not path.is_dir():
        raise UserError(f"--shards '{shards}' is a file; it takes the folder `kgpt2 prepare --out` wrote (to score "
                        "a file's text, prepare it first with the run's tokenizer)")
    return str(path)


def _split_to_score(shards: ShardSet, split: str):
    """`split` of `shards`, or the sentence for one with no articles (naming a held-out split that has some)."""
    data = shards.split(split)
    if data.num_articles == 0:
        others = [n for n, info in shards.manifest["splits"].items() if n != split and info["num_articles"]
                  and n != "train"]
        raise UserError(f"split '{split}' of '{shards.directory}' holds no articles"
                        + (f"; --split {others[0]} scores the held-out articles it has" if others else ""))
    return data


class RunFolderReadOnly(EvaluationNotSaved):
    """Scored, and the run folder is read-only (a shared Drive folder, a read-only mount): the scores stand and
    only the files could not be written, so the command line says so in a warning and ends well (exit 0)."""


def _save(run_dir, rows: list[dict], write) -> None:
    """`save_evaluation`; a run folder that may not be written (permissions, a read-only file system) raises
    RunFolderReadOnly with the warning to give, any other failure (a full disk) EvaluationNotSaved as it was."""
    try:
        save_evaluation(run_dir, rows, write)
    except EvaluationNotSaved as e:
        if os.access(run_dir, os.W_OK):  # False for root too on a read-only file system (EROFS)
            raise
        name = f"evaluation-{rows[0].get('split', 'test')}"
        raise RunFolderReadOnly(f"the run folder '{run_dir}' is read-only, so this evaluation's files ({name}.json, "
                                ".csv and .png) were not saved; copy the run to a writable folder to keep them",
                                e.rows) from None


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
    gone = [str(p) for p in a.data if not Path(p).exists()]
    if gone:  # a moved run finds them where they were (config.json keeps them relative to the run)
        raise UserError(f"align run '{run.path}' is scored on the held-out pairs of its preference files, and "
                        f"'{gone[0]}' is not there any more (moved or deleted): put it back, or score next-token "
                        "metrics on shards instead with --shards DIR")
    pairs, unpaired = read_preferences(a.data, a.template)
    model, tokenizer = build_run_model(cfg)
    rows = encode_preferences(cfg, pairs, unpaired, tokenizer)
    held_x = rows.held_x
    with np.load(path) as cached:
        reference, aligned_on = cached["heldout"], str(cached["data"])
    # The held-out rows' hash as align recorded it (KTO: with their labels): the same count of other pairs would
    # be scored against reference log-probs of the old ones
    held = content_hash({**held_x, "labels": rows.held_labels} if a.loss == "kto" else held_x)
    if len(reference) != len(held_x["token_ids"]) or aligned_on.rsplit("/", 1)[-1] != held:
        raise UserError(f"the preference files of '{run.path}' changed since it was aligned "
                        f"({', '.join(map(str, a.data))}): its held-out pairs are not those its reference log-probs "
                        "were computed on")
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
        _save(run.path, rows, lambda: save_alignment_table(run, table))
    return rows


def _margins(y_true, y_pred, loss: str):
    """Per held-out row: chosen - rejected log-ratio (KTO: the example's log-ratio, signed by its label)."""
    import numpy as np

    ratio = y_pred[:, :2] - y_true[:, :2]
    return np.where(y_true[:, 4] > 0.5, ratio[:, 0], -ratio[:, 0]) if loss == "kto" else ratio[:, 0] - ratio[:, 1]


