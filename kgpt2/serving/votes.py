"""Votes from the demo, kept as JSONL in the run directory: DPO pairs and KTO labels.

A vote on two answers to one prompt appends one line to `<run>/votes.jsonl`:

    {"prompt": "...", "chosen": "...", "rejected": "...", "choice": "a",
     "mode": "arena", "model_a": "sft/ckpt-40", "model_b": "dpo/ckpt-12",
     "answer_a": "...", "answer_b": "...", "labels": {"a": true, "b": false},
     "template": "instruction", "instruction": "...", "input": "", "model_input": "...",
     "settings": {"sampler": "top_p", "temperature": 0.8, "num_beams": 5, ...},
     "time": "2026-11-30T10:00:00+00:00"}

Choices, as in Chatbot Arena: `a` or `b` (that answer is better), `tie`,
`both_bad`. `prompt`/`chosen`/`rejected` is what a DPO trainer reads; a tie
and "both are bad" keep `chosen` and `rejected` null, so `kgpt2.align.read_pairs`
(what `kgpt2 align` reads given the run directory) makes no pair of them.
`labels` is the unpaired (KTO-style) view: the better answer is desirable
(true), the worse one and both "bad" answers undesirable (false), a tie says
nothing (null).

A thumb up or down on one answer (`make_rating`) is one line in TRL's KTO
format, `prompt`, `completion`, `label`, with `choice` "up" / "down", the
`model`, the `side` it was shown on and the same settings and time. A vote
in the chat template also keeps `messages` (the conversation the model
answered), so `kgpt2 align` prompts with the chat template's ids.
`unpaired()` turns records into TRL's KTO rows (`prompt`, `completion`, `label`).

    >>> import tempfile
    >>> from kgpt2.align import read_pairs
    >>> run = tempfile.mkdtemp()
    >>> _ = append_vote(run, make_record("Say hi.", "hi", "go away", "a", "r/base", "r/ckpt-9", {"seed": 0}))
    >>> _ = append_vote(run, make_record("Say hi.", "no", "go away", "both_bad", "r/base", "r/ckpt-9", {}))
    >>> _ = append_vote(run, make_rating("Say hi.", "hello", "up", "r/ckpt-9", {}))
    >>> [(p["prompt"], p["chosen"], p["rejected"]) for p in read_pairs(run)]
    [('Say hi.', 'hi', 'go away')]
    >>> [(r["completion"], r["label"]) for r in unpaired(read_votes(f"{run}/votes.jsonl"))]
    [('hi', True), ('go away', False), ('no', False), ('go away', False), ('hello', True)]
    >>> counts(read_votes(f"{run}/votes.jsonl"))["up"]
    1
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path

from kgpt2.errors import UserError
from kgpt2.io import atomic_write_text

VOTES_FILE = "votes.jsonl"
CHOICES = ("a", "b", "tie", "both_bad")
RATINGS = ("up", "down")  # one answer: desirable / undesirable
_LABELS = {"a": (True, False), "b": (False, True), "tie": (None, None), "both_bad": (False, False)}

_lock = threading.Lock()  # one writer at a time per process (the demo's votes)


def _context(prompt: str, template: str, model_input: str | None, input_text: str) -> dict:
    """What the model was shown: the template, the text it saw, the instruction's fields or the chat's messages."""
    record = {"template": template, "model_input": prompt if model_input is None else model_input}
    if template == "instruction":
        record.update(instruction=prompt, input=input_text)
    if template == "chat":
        record.update(messages=[{"role": "user", "content": prompt}])
    return record


def _stamped(record: dict, settings: dict) -> dict:
    return record | {"settings": dict(settings), "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def make_record(prompt: str, answer_a: str, answer_b: str, choice: str, model_a: str, model_b: str,
                settings: dict, template: str = "plain", model_input: str | None = None, input_text: str = "",
                mode: str = "named") -> dict:
    """A vote as one record: DPO's prompt/chosen/rejected, KTO labels, and everything that made the answers."""
    if choice not in CHOICES:
        raise UserError(f"unknown vote '{choice}' (one of: {', '.join(CHOICES)})")
    chosen, rejected = {"a": (answer_a, answer_b), "b": (answer_b, answer_a)}.get(choice, (None, None))
    label_a, label_b = _LABELS[choice]
    record = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "choice": choice, "mode": mode,
              "model_a": model_a, "model_b": model_b, "answer_a": answer_a, "answer_b": answer_b,
              "labels": {"a": label_a, "b": label_b}}
    return _stamped(record | _context(prompt, template, model_input, input_text), settings)


def make_rating(prompt: str, answer: str, rating: str, model: str, settings: dict, template: str = "plain",
                model_input: str | None = None, input_text: str = "", mode: str = "single", side: str = "a") -> dict:
    """A thumb up or down on one answer: a KTO example (prompt, completion, label) and what made the answer."""
    if rating not in RATINGS:
        raise UserError(f"unknown rating '{rating}' (one of: {', '.join(RATINGS)})")
    record = {"prompt": prompt, "completion": answer, "label": rating == "up", "choice": rating, "mode": mode,
              "side": side, "model": model}
    return _stamped(record | _context(prompt, template, model_input, input_text), settings)


def unpaired(records: list[dict]) -> list[dict]:
    """KTO rows (prompt as the model saw it, completion, label) of the answers a vote judged.

    A chat vote's prompt is its messages (TRL's conversational format).
    """
    rows = []
    for rec in records:
        prompt = rec.get("messages") or rec.get("model_input") or rec["prompt"]
        if rec.get("choice") in RATINGS:
            rows.append({"prompt": prompt, "completion": rec["completion"], "label": bool(rec["label"])})
            continue
        for side in ("a", "b"):
            label = (rec.get("labels") or {}).get(side)
            if label is not None:
                rows.append({"prompt": prompt, "completion": rec[f"answer_{side}"], "label": bool(label)})
    return rows


def append_vote(run_dir, record: dict) -> Path:
    """Append `record` to `<run_dir>/votes.jsonl`; return the file's path.

    The file is rewritten whole through a temporary file and a rename (not an
    append in place), so a crash mid-write never leaves half a line for the
    DPO reader; votes are a few per minute, so the copy costs nothing.
    """
    path = Path(run_dir) / VOTES_FILE
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with _lock:
        try:
            old = path.read_text(encoding="utf-8") if path.is_file() else ""
            if old and not old.endswith("\n"):
                old += "\n"
            atomic_write_text(path, old + line)
        except OSError as e:  # a read-only copy of a run (a shared Drive folder), a full disk: the demo says so
            raise UserError(f"cannot write '{path}' ({e.strerror or e}); make the run folder writable, "
                            "or vote on a copy of the run") from None
    return path


def read_votes(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def counts(votes: list[dict]) -> dict:
    """How many votes of each choice and rating (older files' left/right count as a/b)."""
    alias = {"left": "a", "right": "b"}
    return {c: sum(alias.get(v.get("choice"), v.get("choice")) == c for v in votes) for c in CHOICES + RATINGS}
