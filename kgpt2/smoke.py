"""What `KGPT2_SMOKE=1` swaps in, so the Colab notebooks also run offline in CI.

Every notebook in notebooks/ reads `KGPT2_SMOKE`. Unset, it runs the real
recipe (GPT-2 base, PubMed from Hugging Face, a GPU). Set to 1, it takes
from here:

- `tiny_preset(root)`: the quickstart's byte-level BPE trained on CPython's
  pydoc topics and a 2-layer, 32-wide random GPT-2, saved once as a KerasHub
  preset (kgpt2.quickstart.build_preset does the work),
- `overrides()`: config overrides that shrink the model's context, the
  batches and every loop (and train on the CPU in float32),
- `sample(kind, out)`: a few short documents of the real data in
  ../shared/data (PubMed, Alpaca, Shakespeare) when it lies
  beside the checkout, else of the pydoc topics, written in the same format
  as the real data so the notebook's `prepare` call is the same.

    >>> from kgpt2 import smoke
    >>> smoke.enabled() in (True, False)
    True
    >>> "train.device=cpu" in smoke.overrides()
    True
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kgpt2.data.sources import open_source
from kgpt2.quickstart import build_preset, quickstart_config

ENV = "KGPT2_SMOKE"

# The tiny model: the quickstart's shape, shrunk until a stage compiles and
# runs in seconds on a 2-core CPU.
TINY_MODEL = ["model.num_layers=2", "model.num_heads=2", "model.hidden_dim=32", "model.intermediate_dim=64",
              "model.max_sequence_length=64", "model.dropout=0.0"]
# Short loops: big batches of short windows (2,048 tokens a step, so a corpus
# of ~150k tokens is ~75 steps), two validation batches, no mid-stage checkpoints.
SHORT_LOOPS = ["data.sequence_length=64", "train.batch_size=32", "train.epochs=1", "train.max_steps=0",
               "train.warmup_steps=2", "train.learning_rate=0.003", "train.gradient_accumulation_steps=1",
               "train.eval_batches=2", "train.checkpoint_every=0", "train.eval_every=0", "train.keep_best=false",
               "train.precision=float32", "train.device=cpu"]

# (documents, characters per document) written by `sample` for each split.
SAMPLE_SIZES = {"train": (24, 1500), "validation": (4, 1500), "test": (4, 1500)}


def enabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0", "false", "False")


def shared_data() -> Path | None:
    """../shared/data beside the checkout (or $KGPT2_SHARED_DATA), if it is there."""
    env = os.environ.get("KGPT2_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


def overrides(*extra: str) -> list[str]:
    """Config overrides for smoke mode: tiny shape, short loops, CPU; `extra` last (it wins)."""
    return TINY_MODEL + SHORT_LOOPS + list(extra)


def tiny_preset(checkpoints_root) -> str:
    """A tiny random GPT-2 with the pydoc BPE as a KerasHub preset under the root (built once)."""
    preset = Path(checkpoints_root) / "smoke-preset"
    return str(build_preset(quickstart_config(str(checkpoints_root), overrides(f"model.preset={preset}"))))


def sample(kind: str, out) -> str:
    """Write a small sample of `kind` (pubmed, alpaca, shakespeare) to `out`; return its path.

    Real data from ../shared/data when it is present, else pydoc topics in the
    same format. Short documents keep every stage to a few steps.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shared = shared_data()
    n_train, chars = SAMPLE_SIZES["train"]
    if kind == "pubmed":
        # scientific_papers-style {"article", "abstract"} JSON Lines, one file per split.
        out.mkdir(parents=True, exist_ok=True)
        memsum = shared / "pubmed" / "memsum_pubmed_300" if shared else None
        for split, file in (("train", "train"), ("validation", "val"), ("test", "test")):
            n, chars = SAMPLE_SIZES[split]
            if memsum and (memsum / f"{file}.jsonl").is_file():
                with open(memsum / f"{file}.jsonl", encoding="utf-8") as f:
                    records = [json.loads(line) for _, line in zip(range(n), f)]
                rows = [{"article": " ".join(r["text"])[:chars], "abstract": " ".join(r["summary"])[:300]}
                        for r in records]
            else:
                rows = [{"article": t[:chars], "abstract": t[:200]} for t in _pydoc(n, offset=len(file))]
            (out / f"{file}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return str(out)
    if kind == "alpaca":
        name = "alpaca/alpaca_5000.json"
        if shared and (shared / name).is_file():
            records = json.loads((shared / name).read_text(encoding="utf-8"))[:n_train * 2]
        else:
            texts = _pydoc(n_train * 2)
            records = [{"instruction": f"Explain {t.split()[0]}.", "input": "", "output": t[:300]} for t in texts]
        out = out.with_suffix(".json")
        out.write_text(json.dumps(records), encoding="utf-8")
        return str(out)
    if kind == "shakespeare":
        src = shared / "shakespeare" / "input.txt" if shared else None
        text = src.read_text(encoding="utf-8")[:40_000] if src and src.is_file() else "\n\n".join(_pydoc(20))[:40_000]
        out = out.with_suffix(".txt")
        out.write_text(text, encoding="utf-8")
        return str(out)
    raise ValueError(f"unknown smoke sample '{kind}' (pubmed, alpaca, shakespeare)")


def _pydoc(n: int, offset: int = 0) -> list[str]:
    docs = [d.text for d in open_source("pydoc")]
    return [docs[(offset + i) % len(docs)] for i in range(n)]
