"""Preference votes from the demo, kept as DPO-ready JSONL in the run directory.

Each vote on two answers to the same prompt appends one line to
`<run>/votes.jsonl`:

    {"prompt": "...", "chosen": "...", "rejected": "...", "choice": "left",
     "template": "plain", "model_input": "...",
     "left_model": "quickstart/base", "right_model": "quickstart/ckpt-225",
     "left_answer": "...", "right_answer": "...",
     "settings": {"sampler": "top_p", "temperature": 0.8, ...},
     "time": "2026-11-23T10:00:00+0000"}

`prompt`/`chosen`/`rejected` is the form a DPO trainer reads. With the
instruction template the record also carries `instruction` and `input` (the
Alpaca fields of ../shared/data/preferences), so a reader that applies the
template itself finds them. A tie keeps `choice: "tie"` with `chosen` and
`rejected` both null: it is recorded (how often two checkpoints tie is worth
knowing) but is no preference pair; `kgpt2.align.read_pairs` (what `kgpt2 align`
reads, given the run directory) skips and counts it.

    >>> import tempfile
    >>> from kgpt2.align import read_pairs
    >>> from kgpt2.votes import make_record, append_vote
    >>> run = tempfile.mkdtemp()
    >>> rec = make_record("Say hi.", "hi", "go away", "left", "r/base", "r/ckpt-9", {"seed": 0})
    >>> _ = append_vote(run, rec)
    >>> [(p["prompt"], p["chosen"], p["rejected"]) for p in read_pairs(run)]
    [('Say hi.', 'hi', 'go away')]
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from kgpt2.errors import UserError
from kgpt2.io import atomic_write_text

VOTES_FILE = "votes.jsonl"
CHOICES = ("left", "right", "tie")

_lock = threading.Lock()  # one writer at a time per process (the demo's votes)


def make_record(prompt: str, left_answer: str, right_answer: str, choice: str, left_model: str,
                right_model: str, settings: dict, template: str = "plain", model_input: str | None = None) -> dict:
    """A vote as a DPO record: the preferred answer is `chosen`, the other `rejected`."""
    if choice not in CHOICES:
        raise UserError(f"unknown vote '{choice}' (one of: {', '.join(CHOICES)})")
    chosen, rejected = {"left": (left_answer, right_answer), "right": (right_answer, left_answer),
                        "tie": (None, None)}[choice]
    record = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "choice": choice,
              "template": template, "model_input": prompt if model_input is None else model_input}
    if template == "instruction":
        record.update(instruction=prompt, input="")
    record.update(left_model=left_model, right_model=right_model, left_answer=left_answer,
                  right_answer=right_answer, settings=dict(settings),
                  time=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return record


def append_vote(run_dir, record: dict) -> Path:
    """Append `record` to `<run_dir>/votes.jsonl`; return the file's path.

    The file is rewritten whole through a temporary file and a rename (not an
    append in place), so a crash mid-write never leaves half a line for the
    DPO reader; votes are a few per minute, so the copy costs nothing.
    """
    path = Path(run_dir) / VOTES_FILE
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with _lock:
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        atomic_write_text(path, old + line)
    return path


def read_votes(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
