"""Pre-training from scratch: your own tokenizer and a fresh GPT-2 of any shape.

Two ingredients, each saved in the form the rest of kgpt2 already reads:

- `train_tokenizer` (`kgpt2 tokenizer train`): a byte-level BPE trained on a
  corpus (GPT-2 style, HF `tokenizers`), saved as `vocabulary.json` +
  `merges.txt` (`keras_hub.models.GPT2Tokenizer(vocabulary=..., merges=...)`
  loads them; a preset made from it loads with `GPT2Tokenizer.from_preset`),
  or with `char=True` a nanoGPT-style character vocabulary
  (`kgpt2.char_tokenizer`).
  `model.tokenizer = DIR` and `kgpt2 prepare --tokenizer DIR` take either.
- `init_preset` (`kgpt2 pretrain init`): a randomly initialised
  GPT2Backbone of the shape in `[model]` (layers, heads, width, context,
  vocabulary, dropout), seeded, saved with its tokenizer as a KerasHub preset.

`kgpt2 train` with `model.preset = "scratch"` calls `resolve_scratch`: the
first time, it saves that preset as `<run>/preset` and records the run as
using it, so train stages, resume, evaluate (`base` = the exact initial
weights), generate and the demo all see an ordinary local preset.

    >>> from kgpt2.pretrain import train_tokenizer
    >>> tok = train_tokenizer("../shared/data/shakespeare/input.txt", "/tmp/chars", char=True)
    >>> tok.vocab_size  # 65 characters + end-of-text
    66
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from kgpt2.config import Config, ModelConfig
from kgpt2.errors import UserError

log = logging.getLogger("kgpt2")

PRESET_DIR = "preset"  # <run>/preset: the from-scratch base of a run


def _texts(source: str, fmt: str | None = None):
    from kgpt2.data.sources import open_source

    texts = [doc.text for doc in open_source(source, fmt)]
    if not texts:
        raise UserError(f"source '{source}' holds no text to train a tokenizer on")
    return texts


def train_tokenizer(source: str, out_dir, vocab_size: int = 0, *, char: bool = False,
                    fmt: str | None = None, min_frequency: int = 2):
    """Train a tokenizer on `source` and save it to `out_dir`; return it.

    BPE: `vocab_size` tokens in all (256 bytes + end-of-text + merges), saved
    as the vocabulary.json + merges.txt that KerasHub's GPT2Tokenizer reads.
    Char: every distinct character plus end-of-text; `vocab_size` is ignored.
    """
    texts = _texts(source, fmt)
    out_dir = Path(out_dir)
    if char:
        from kgpt2.char_tokenizer import CharTokenizer

        tokenizer = CharTokenizer.train(texts)
        tokenizer.save(out_dir)
        return tokenizer
    from kgpt2.tokenizer import Tokenizer

    if vocab_size < 258:
        raise UserError(f"a byte-level BPE needs --vocab-size of at least 258 (256 bytes, end-of-text, a merge), got {vocab_size}")
    tokenizer = Tokenizer.train(texts, vocab_size=vocab_size, min_frequency=min_frequency)
    tokenizer.save(out_dir)
    return tokenizer


def scratch_shape(model: ModelConfig, tokenizer) -> ModelConfig:
    """`model` with `vocabulary_size = 0` resolved to the tokenizer's size, checked."""
    size = model.vocabulary_size or tokenizer.vocab_size
    if size < tokenizer.vocab_size:
        raise UserError(f"model.vocabulary_size {size} is smaller than the tokenizer's {tokenizer.vocab_size} tokens")
    if model.hidden_dim % model.num_heads:
        raise UserError(f"model.hidden_dim {model.hidden_dim} must be a multiple of model.num_heads {model.num_heads}")
    return replace(model, preset="scratch", vocabulary_size=size)


def init_preset(cfg: Config, out_dir, seed: int | None = None) -> Path:
    """Save a seeded, randomly initialised GPT-2 of `cfg.model`'s shape as a KerasHub preset."""
    import keras

    from kgpt2.devices import dtype_policy
    from kgpt2.models import build_backbone, load_tokenizer, save_preset

    if not cfg.model.tokenizer:
        raise UserError("a from-scratch model needs model.tokenizer (a directory written by `kgpt2 tokenizer train`)")
    tokenizer = load_tokenizer(replace(cfg.model, preset="scratch"))
    shape = scratch_shape(cfg.model, tokenizer)
    if cfg.data.sequence_length > shape.max_sequence_length:
        raise UserError(f"data.sequence_length {cfg.data.sequence_length} exceeds model.max_sequence_length {shape.max_sequence_length}")
    # float32 weights on disk; keras-hub converts them to the training policy on load.
    with dtype_policy("float32"):
        keras.utils.set_random_seed(cfg.seed if seed is None else seed)
        backbone = build_backbone(shape)
        out = save_preset(backbone, tokenizer, out_dir)
    log.info("saved a %d-layer, %d-head, %d-wide GPT-2 (%s parameters, vocabulary %d, context %d) as preset %s",
             shape.num_layers, shape.num_heads, shape.hidden_dim, f"{backbone.count_params():,}",
             shape.vocabulary_size, shape.max_sequence_length, out)
    return out


def resolve_scratch(cfg: Config) -> Config:
    """For `model.preset = "scratch"`: the same config using `<run>/preset`, made once."""
    if cfg.model.preset != "scratch":
        return cfg
    preset_dir = cfg.run_dir / PRESET_DIR
    if not (preset_dir / "config.json").is_file():
        init_preset(cfg, preset_dir)
    else:
        _check_same_shape(cfg.model, preset_dir)
    return replace(cfg, model=replace(cfg.model, preset=str(preset_dir)))


def _check_same_shape(model: ModelConfig, preset_dir: Path) -> None:
    """A run's saved preset must still be the shape its config asks for."""
    import json

    saved = json.loads((preset_dir / "config.json").read_text())["config"]
    asked = {"num_layers": model.num_layers, "num_heads": model.num_heads, "hidden_dim": model.hidden_dim,
             "intermediate_dim": model.intermediate_dim, "max_sequence_length": model.max_sequence_length}
    if model.vocabulary_size:
        asked["vocabulary_size"] = model.vocabulary_size
    diffs = [f"{k} {saved.get(k)} -> {v}" for k, v in asked.items() if saved.get(k) != v]
    if diffs:
        raise UserError(f"run preset '{preset_dir}' has another shape than model.* asks for ({', '.join(diffs)}); use a new run name")


def run_summary(run_dir) -> dict:
    """Speed and loss of a run from its logs: what docs/benchmarks.md reports.

    logs/steps.csv has one row per executed call of the train function (one
    step, or `train.steps_per_execution` steps), timed between batch ends
    within one `fit` call. From it:
    - `ms_per_step_median` / `_p90`: per-step time of the rows after the
      first `warm` steps, rows that ran an evaluation excluded (steady state);
    - `first_execution_s`: the first row, XLA compilation included;
    - `ms_per_step_wall`: training wall time from the first to the last row
      (fit restarts at epoch ends included, evaluation time excluded) per step;
    - best and final validation loss and their steps, from logs/evals.csv.
    """
    import numpy as np

    from kgpt2.periodic_eval import read_best, read_evals
    from kgpt2.run_logs import read_steps
    from kgpt2.runs import load_run_config

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    steps, evals = read_steps(run_dir), read_evals(run_dir)
    if steps.empty:
        raise UserError(f"run '{run_dir}' has no logged steps yet")
    tokens_per_step = cfg.train.batch_size * cfg.data.sequence_length
    step_ids = steps["step"].to_numpy(dtype=np.int64)
    ran = np.diff(step_ids, prepend=step_ids[0] - (step_ids[0] if len(step_ids) == 1 else step_ids[1] - step_ids[0]))
    ran[0] = max(1, min(ran[0], step_ids[0]))  # the first row: steps since the run (re)started
    per_step = tokens_per_step / steps["tokens_per_s"].to_numpy(dtype=float)  # seconds per step in each row
    eval_steps = sorted(int(s) for s in evals["step"]) if not evals.empty else []
    warm = min(50, max(1, int(step_ids[-1]) // 10))
    had_eval = np.array([any(lo < e <= hi for e in eval_steps) for lo, hi in zip(step_ids - ran, step_ids)])
    steady = per_step[(step_ids - ran >= warm) & ~had_eval]
    eval_seconds = float(evals["eval_seconds"].sum()) if not evals.empty else 0.0
    before_first = float(evals.loc[evals["step"] <= step_ids[0] - ran[0], "eval_seconds"].sum()) if eval_steps else 0.0
    times = steps["time"].to_numpy(dtype=float)
    wall = times[-1] - times[0] - (eval_seconds - before_first)
    summary = {
        "run": str(run_dir), "steps": int(step_ids[-1]), "tokens_per_step": tokens_per_step,
        "steps_per_execution": cfg.train.steps_per_execution,
        "first_execution_s": round(float(per_step[0] * ran[0]), 3),
        "ms_per_step_median": round(1000 * float(np.median(steady)), 3) if len(steady) else None,
        "ms_per_step_p90": round(1000 * float(np.percentile(steady, 90)), 3) if len(steady) else None,
        "ms_per_step_wall": round(1000 * float(wall) / max(1, int(step_ids[-1] - step_ids[0])), 3),
        "evaluations": len(evals), "eval_seconds": round(eval_seconds, 2),
    }
    if not evals.empty and evals["val_loss"].notna().any():
        i = evals["val_loss"].idxmin()
        summary.update(best_val_loss=round(float(evals.loc[i, "val_loss"]), 4), best_step=int(evals.loc[i, "step"]),
                       final_val_loss=round(float(evals["val_loss"].iloc[-1]), 4),
                       final_step=int(evals["step"].iloc[-1]))
    best = read_best(run_dir)
    if best:
        summary["best_checkpoint"] = best.get("id")
    return summary


def format_summary(summary: dict) -> str:
    return "\n".join(f"{k:>20}: {v}" for k, v in summary.items())
