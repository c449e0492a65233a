"""Preference data for `kgpt2 align`: pairs, unpaired KTO examples, and their token arrays.

Pairs are (prompt, chosen, rejected) from JSON/JSONL files or a demo run's
votes; unpaired examples (TRL's KTO format: `prompt` or `instruction`/`input`,
`completion`, `label` true/false) feed `align.loss = "kto"`, and a pair gives
KTO one desirable and one undesirable example. Demo votes (kgpt2.serving.votes) give:
"A/B is better" a pair; "both are bad" two undesirable examples; a thumb up
or down on one answer one example; a tie nothing. The paired losses skip a
vote's unpaired examples (counted) but refuse a file of KTO records.

A prompt is text or, for chat data (`messages`, TRL's conversational
`prompt` list, a vote in the chat template, or `align.template = "chat"`), a
list of messages; `encode_rows` turns rows of (prompt, response 0,
response 1) into the [N, 2, T] arrays the policy scores, a chat prompt in the
ids `kgpt2 train` and `kgpt2 generate` use (kgpt2.generation.templates.prompt_ids).

    >>> from kgpt2.data.preference_pairs import unpair
    >>> unpair([{"prompt": "Q", "chosen": "yes", "rejected": "no"}])
    [{'prompt': 'Q', 'completion': 'yes', 'label': True}, {'prompt': 'Q', 'completion': 'no', 'label': False}]
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kgpt2.data.compression import open_bytes, plain
from kgpt2.data.examples import encode_example
from kgpt2.data.instructions import record_prompt, record_response
from kgpt2.data.records import is_table_file, json_array, table_records
from kgpt2.data.shard_folder import FORMAT as SHARD_FORMAT
from kgpt2.data.shard_folder import MANIFEST, read_manifest
from kgpt2.errors import UserError
from kgpt2.reports import counted

NO_PREFERENCE_FILES = "align.data is empty: give preference files (prompt/chosen/rejected JSON, JSONL or CSV)"
ALIGN_TAKES = ("align.data takes preference files (prompt/chosen/rejected JSON Lines, a JSON array or CSV) or a demo "
               "run's folder (its votes.jsonl)")


@dataclass
class PairStats:
    read: int = 0
    ties: int = 0  # demo votes without a preference
    identical: int = 0  # chosen == rejected: no preference signal
    too_long: int = 0  # the prompt alone fills the window
    used: int = 0
    unpaired: int = 0  # KTO examples (completion + label, "both bad" votes)
    skipped: int = 0  # unpaired examples of votes a paired loss does not read
    files: list = field(default_factory=list)


def _records(path: Path):
    """(where, record) of a JSON array, JSON Lines, or a CSV/TSV/parquet table of records."""
    if is_table_file(path):
        yield from table_records(path)
        return
    records = json_array(path)  # JSON Lines of lists are named at their first line, not the valid second
    if records is not None:
        yield from ((f"{path} [record {i}]", r) for i, r in enumerate(records, 1))  # 1-based, as lines
        return
    try:
        with open_bytes(path) as f:
            text = f.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 (byte {e.start})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError:
                _refuse_one_document(path, text)
                raise UserError(f"{path}:{lineno}: invalid JSON") from None


def _refuse_one_document(path: Path, text: str) -> None:
    """A file whose lines are no JSON but whose whole text is: one document (pretty-printed), not JSON Lines."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return
    kind = "an object" if isinstance(doc, dict) else "a value"
    raise UserError(f"'{path}' is one JSON document ({kind} over {text.strip().count(chr(10)) + 1} lines), where "
                    "JSON Lines (one prompt/chosen/rejected pair per line) or a JSON array of pairs are expected")


def _is_shard_set(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() and (read_manifest(folder).get("format") == SHARD_FORMAT
                                              or any(folder.glob("*.ids.txt")))


def _refuse_shard_set(path: Path, folder: Path) -> None:
    """A shard set (or its manifest) is `kgpt2 prepare`'s output: it trains with `kgpt2 train`, not align."""
    what = "the manifest of a kgpt2 shard set" if path != folder else "a kgpt2 shard set"
    raise UserError(f"'{path}' is {what} (what `kgpt2 prepare` writes, for `kgpt2 train`: data.shards = "
                    f"\"{folder}\"), not preference data; {ALIGN_TAKES}")


def _is_trained_run(folder: Path) -> bool:
    """A run folder with a checkpoint (what align.init_run takes; given as align.data by mistake)."""
    return (folder / "config.json").is_file() and any(folder.glob("ckpt-*/state.json"))


def _refuse_folder_without_votes(folder: Path) -> None:
    if _is_trained_run(folder):
        raise UserError(f"'{folder}' is a kgpt2 run without demo votes (no votes.jsonl), not preference data: to "
                        f"start from its weights give align.init_run={folder}; {ALIGN_TAKES}")
    raise UserError(f"preference folder '{folder}' holds no votes.jsonl (the votes a demo run records); {ALIGN_TAKES}")


def _files(paths):
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise UserError(NO_PREFERENCE_FILES)
    for path in map(Path, paths):
        if path.is_dir() and _is_shard_set(path):
            _refuse_shard_set(path, path)
        if path.name == MANIFEST and path.is_file() and _is_shard_set(path.parent):
            _refuse_shard_set(path, path.parent)
        if path.is_dir():
            if not (path / "votes.jsonl").is_file():
                _refuse_folder_without_votes(path)
            path = path / "votes.jsonl"  # a demo run directory
        if not path.is_file():
            raise UserError(f"preference file '{path}' does not exist")
        yield path


def read_preferences(paths, template: str = "plain", stats: PairStats | None = None) -> tuple[list, list]:
    """(pairs, unpaired): pairs {prompt, chosen, rejected}, unpaired {prompt, completion, label}.

    Records give `instruction`/`input` (rendered with the Alpaca template),
    a raw `prompt` (votes: the `model_input` the model saw) or chat messages.
    Ties (no chosen) and pairs whose chosen equals rejected are skipped and
    counted; files that leave nothing at all are refused, saying why per
    reason. Unpaired examples from demo votes carry `"vote": True`.
    """
    stats = stats if stats is not None else PairStats()
    before = PairStats(read=stats.read, ties=stats.ties, identical=stats.identical)
    pairs, unpaired, files = [], [], []
    for path in _files(paths):
        stats.files.append(str(path))
        files.append(str(path))
        for where, rec in _records(path):
            singles = _unpaired(rec, where, template)
            if singles is not None:
                stats.read += 1
                stats.unpaired += len(singles)
                unpaired += singles
                continue
            if not isinstance(rec, dict) or "chosen" not in rec or "rejected" not in rec:
                raise UserError(f"{where}: expected chosen and rejected fields (or completion and label for KTO)"
                                f"{_what_it_has(rec)}")
            stats.read += 1
            chosen, rejected = (record_response(rec[k], where, k) for k in ("chosen", "rejected"))
            if chosen is None or rejected is None:
                stats.ties += 1
                continue
            chosen, rejected = chosen.strip(), rejected.strip()
            if chosen == rejected:
                stats.identical += 1
                continue
            pairs.append({"prompt": record_prompt(rec, where, template), "chosen": chosen, "rejected": rejected})
    if not pairs and not unpaired:
        _refuse_nothing_usable(files, stats.read - before.read, stats.ties - before.ties,
                               stats.identical - before.identical)
    return pairs, unpaired


def _refuse_nothing_usable(files: list, read: int, ties: int, identical: int) -> None:
    """Why no record gave a pair or an example, counted per reason (the held-out split said only "0 usable")."""
    where = f"'{files[0]}'" if len(files) == 1 else f"the {len(files)} files ({', '.join(files)})"
    if not read and len(files) == 1 and is_table_file(files[0]):  # a CSV of only its header row: no JSON talk
        raise UserError(f"{where} {_empty_table(Path(files[0]))} (give a row per pair, with prompt, chosen and "
                        "rejected columns)")
    if not read:  # an empty file, blank lines, or an empty JSON list
        rows = ", or CSV, TSV or parquet rows," if any(map(is_table_file, files)) else ""
        raise UserError(f"{where} {'holds' if len(files) == 1 else 'hold'} no preference records (give JSON or "
                        f"JSON Lines records{rows} with prompt, chosen and rejected)")
    reasons = []
    if identical:
        reasons.append(f"{identical} {'has' if identical == 1 else 'have'} chosen == rejected (nothing to prefer)")
    if ties:
        reasons.append(f"{ties} {'has' if ties == 1 else 'have'} a null chosen or rejected (a tie vote, no preference)")
    raise UserError(f"no usable preference pair in {where}: of {counted(read, 'record')} read, {' and '.join(reasons)}")


def _empty_table(path: Path) -> str:
    """What a table file that gave no rows holds: a header only, or nothing."""
    suffix = plain(path).suffix.lower()
    if suffix == ".parquet":
        return "is a parquet table with no rows"
    with open_bytes(path) as f:
        header = f.read(65536).strip()
    return "has a header but no rows" if header else f"is an empty {suffix[1:].upper()} file"


def _what_it_has(rec) -> str:
    """What a record that is no pair holds instead: instruction data given as pairs is the usual mistake."""
    if not isinstance(rec, dict):
        kind = "null" if rec is None else {bool: "boolean", int: "number", float: "number", str: "string",
                                           list: "array"}.get(type(rec), type(rec).__name__)
        return f"; it is a JSON {kind}, not an object"
    keys = ", ".join(list(rec)[:8]) + (", ..." if len(rec) > 8 else "")
    return f"; it has {keys}" if rec else "; it is an empty object"


# A demo vote's answers under older names: "left"/"right" before the arena's A/B.
_VOTE_ANSWERS = {"a": ("answer_a", "left_answer"), "b": ("answer_b", "right_answer")}


_TEXT_LABELS = {"true": True, "false": False, "1": True, "0": False}  # a CSV's cells are text


def _unpaired(rec, where: str, template: str) -> list | None:
    """KTO examples of a record: a completion with a label (TRL's format, a thumb vote), or "both bad"."""
    if not isinstance(rec, dict):
        return None
    vote = "choice" in rec  # a demo vote (kgpt2.serving.votes)
    if "completion" in rec and "label" in rec:
        label = _TEXT_LABELS.get(rec["label"].strip().lower()) if isinstance(rec["label"], str) else rec["label"]
        if label not in (True, False, 0, 1):
            raise UserError(f"{where}: label must be true or false, got {rec['label']!r}")
        completion = record_response(rec["completion"], where, "completion")
        return [{"prompt": record_prompt(rec, where, template), "completion": str(completion).strip(),
                 "label": bool(label)} | ({"vote": True} if vote else {})]
    if rec.get("choice") == "both_bad":
        answers = [next((rec[k] for k in _VOTE_ANSWERS[side] if k in rec), None) for side in "ab"]
        if None in answers:
            raise UserError(f"{where}: a \"both bad\" vote needs both answers (answer_a, answer_b)")
        prompt = record_prompt(rec, where, template)
        return [{"prompt": prompt, "completion": str(a).strip(), "label": False, "vote": True} for a in answers]
    return None


def refuse_unpaired(unpaired: list, loss: str = "dpo") -> None:
    """Paired losses train on pairs only: KTO records given to them are refused (votes' are skipped)."""
    records = [u for u in unpaired if not u.get("vote")]
    if records:
        raise UserError(f"{counted(len(records), 'record')} {'is' if len(records) == 1 else 'are'} unpaired "
                        "(completion + label): "
                        f"only align.loss = \"kto\" trains on {'it' if len(records) == 1 else 'them'}, not \"{loss}\"")


def read_pairs(paths, template: str = "plain", stats: PairStats | None = None) -> list[dict]:
    """The pairs of `read_preferences`; unpaired records are refused (only KTO reads them), votes' skipped."""
    pairs, unpaired = read_preferences(paths, template, stats)
    refuse_unpaired(unpaired)
    return pairs


def unpair(pairs: list[dict]) -> list[dict]:
    """Each pair as a desirable (chosen) and an undesirable (rejected) KTO example."""
    out = []
    for p in pairs:
        out += [{"prompt": p["prompt"], "completion": p["chosen"], "label": True},
                {"prompt": p["prompt"], "completion": p["rejected"], "label": False}]
    return out


def kto_rows(examples: list[dict], seed: int) -> list[tuple]:
    """(prompt, completion, mismatched completion) per example: slot 1 answers another example's prompt.

    TRL's KTO estimates the KL term from such mismatched pairs; here the
    partner is fixed once (a seeded derangement), so a resumed run sees the same rows.
    """
    n = len(examples)
    shift = np.random.default_rng(seed).permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[shift] = np.roll(shift, 1)  # a cycle through a random order: nobody is their own partner
    return [(e["prompt"], e["completion"], examples[int(partner[i])]["completion"] if n > 1 else e["completion"])
            for i, e in enumerate(examples)]


def encode_rows(tokenizer, rows: list[tuple], sequence_length: int, stats: PairStats | None = None):
    """(inputs, kept) for rows of (prompt, response 0, response 1).

    inputs: token_ids, padding_mask, targets, weights as [N, 2, T] arrays;
    `weights` is 1 on the targets that are response tokens (or the final
    end-of-text), so a sum of weighted log-probs is log p(response | prompt).
    A row where a response gets no token in the window is dropped and counted.
    """
    stats = stats if stats is not None else PairStats()
    T = sequence_length
    encoded, kept = [], []
    for k, (prompt, *responses) in enumerate(rows):
        row = [tuple(a[:T + 1] for a in encode_example(tokenizer, prompt, r)) for r in responses]
        if min(int(m[1:].sum()) for _, m in row) == 0:
            stats.too_long += 1
            continue
        encoded.append(row)
        kept.append(k)
    n = len(encoded)
    tokens = np.zeros((n, 2, T + 1), dtype="int32")
    mask = np.zeros((n, 2, T + 1), dtype="float32")
    valid = np.zeros((n, 2, T + 1), dtype=bool)
    for i, row in enumerate(encoded):
        for j, (ids, m) in enumerate(row):
            tokens[i, j, :len(ids)], mask[i, j, :len(ids)], valid[i, j, :len(ids)] = ids, m, True
    inputs = {"token_ids": tokens[..., :-1], "padding_mask": valid[..., :-1],
              "targets": tokens[..., 1:], "weights": mask[..., 1:] * valid[..., :-1]}
    return inputs, np.asarray(kept, dtype=np.int64)


def encode_pairs(tokenizer, pairs: list[dict], sequence_length: int, stats: PairStats | None = None):
    """`encode_rows` of (prompt, chosen, rejected): index 0 chosen, 1 rejected."""
    stats = stats if stats is not None else PairStats()
    inputs, kept = encode_rows(tokenizer, [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs],
                               sequence_length, stats)
    stats.used = len(kept)
    return inputs, kept


def heldout_scores(prompts: list, seed: int) -> np.ndarray:
    """Each prompt's seeded hash in [0, 1): a prompt is held out when its score is below the fraction, so the
    split is deterministic and a prompt is never on both sides."""
    keys = [p if isinstance(p, str) else json.dumps(p, sort_keys=True, ensure_ascii=False) for p in prompts]
    return np.array([zlib.crc32(f"{seed}:{k}".encode()) / 2**32 for k in keys])


def _round_inside(low: float, high: float) -> tuple[str, str]:
    """The shortest decimals lo > low and hi <= high, lo < hi where the gap allows, for a range to type."""
    for digits in range(1, 12):
        scale = 10 ** digits
        lo, hi = (math.floor(low * scale) + 1) / scale, math.floor(high * scale) / scale
        if lo < hi or (lo == hi and digits == 11):
            return f"{lo:.{digits}f}", f"{hi:.{digits}f}"
    return f"{high:.12f}", f"{high:.12f}"  # scores closer than 1e-11: only the higher one itself splits them


def check_heldout_split(scores: np.ndarray, n_train: int, n_held: int, fraction: float, unit: str) -> None:
    """Refuse a split with nothing on one side, saying which side and which fractions would split the prompts.

    `scores`: `heldout_scores` of the rows' prompts. Whole prompts are held out, so a handful of prompts
    splits only for fractions between their scores.

        >>> check_heldout_split(np.array([0.396, 0.436, 0.396]), 0, 3, 0.5, "examples")
        Traceback (most recent call last):
        ...
        kgpt2.errors.UserError: all 3 usable preference examples (2 prompts) fall in the held-out share (align.heldout_fraction = 0.5; whole prompts are held out, picked by a hash), leaving none to train on; any align.heldout_fraction from 0.40 to 0.43 splits these prompts, or give more data
    """
    if n_train and n_held:
        return
    n, distinct = n_train + n_held, np.unique(scores)
    if n == 0:  # no split can help: say what left nothing (read_preferences refused files with no records)
        raise UserError(_nothing_encoded(len(scores), unit))
    if len(distinct) < 2:
        advice = "a held-out share needs two different prompts at least: give more data"
    else:
        lo, hi = _round_inside(distinct[0], distinct[-1])  # held out: score < fraction, so (first, last]
        advice = f"any align.heldout_fraction from {lo} to {hi} splits these prompts, or give more data"
    usable = f"{counted(n, 'usable preference ' + unit.removesuffix('s'))} ({counted(len(distinct), 'prompt')})"
    where = f"none of the {usable} falls in the held-out share" if n_held == 0 else \
        f"all {usable} fall in the held-out share"
    side = "" if n_held == 0 else ", leaving none to train on"
    raise UserError(f"{where} (align.heldout_fraction = {fraction}; whole prompts are held out, picked by a hash)"
                    f"{side}; {advice}")


def _nothing_encoded(rows: int, unit: str) -> str:
    if not rows:  # a paired loss given votes' single answers only: they were skipped
        return (f"no preference {unit} to train on: the records are single answers (thumb votes, \"both bad\" "
                "votes), which only align.loss = \"kto\" reads")
    return (f"all {counted(rows, unit.removesuffix('s'))} {'was' if rows == 1 else 'were'} dropped: the prompt "
            "alone fills data.sequence_length tokens, leaving no room for the answer; raise data.sequence_length "
            "(up to the model's context) or shorten the prompts")


def content_hash(inputs: dict) -> str:
    """A hash of the encoded rows: a cached reference or a resume must see the same data."""
    h = 0
    for key in sorted(inputs):
        h = zlib.crc32(np.ascontiguousarray(inputs[key]).tobytes(), h)
    return f"{h:08x}-{len(inputs['token_ids'])}"
