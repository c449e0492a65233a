"""`kgpt2 quickstart`: the whole pipeline, offline, on CPU, in a few minutes.

Corpus: the Python Language Reference articles that ship inside every CPython
(`pydoc_data.topics`, ~80 articles); no download. Then:

1. train a byte-level BPE on them (`tokenizers`, saved in GPT-2 vocab/merges form),
2. save a tiny random GPT-2 as a KerasHub preset (`checkpoints/quickstart/preset`):
   the "base" model the demo compares against,
3. prepare token shards (train/validation/test split by article),
4. train in three stages (10 -> 30 -> rest articles) with a checkpoint per stage,
5. evaluate the base and each stage on the test split, generate a sample.

    >>> from kgpt2.quickstart import quickstart
    >>> # result = quickstart()            # 1m34s on 2 idle CPU cores (configs/quickstart.toml)
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from kgpt2.config import Config, load_config
from kgpt2.data.shards import prepare
from kgpt2.evaluate import evaluate_run
from kgpt2.generate import generate_from_run
from kgpt2.model.models import load_tokenizer
from kgpt2.model.scratch import init_preset
from kgpt2.tokenizer_training import train_tokenizer
from kgpt2.train import train

log = logging.getLogger("kgpt2")

QUICKSTART_CONFIG = Path(__file__).parent / "configs" / "quickstart.toml"
TOKENIZER_VOCAB = 1024
SAMPLE_PROMPT = "The assert statement"  # the greedy sample quickstart prints


def quickstart_config(checkpoints_root: str = "checkpoints", overrides=()) -> Config:
    """The quickstart run's config: its preset, tokenizer and shards inside the run's folder.

    The folder is the one the overrides name, if they do (`checkpoints_root=DIR`, `run=NAME`, the keys of
    every run config), so nothing the run reads lands outside it:

        >>> cfg = quickstart_config("checkpoints", ["checkpoints_root=runs", "run=first"])
        >>> str(cfg.run_dir), cfg.model.preset, cfg.data.shards
        ('runs/first', 'runs/first/preset', 'runs/first/shards')
    """
    overrides = list(overrides)
    run_dir = load_config(QUICKSTART_CONFIG, [f"checkpoints_root={checkpoints_root}", "run=quickstart",
                                              *overrides]).run_dir
    base = [f"checkpoints_root={checkpoints_root}", "run=quickstart",
            f"model.preset={run_dir / 'preset'}", f"data.shards={run_dir / 'shards'}"]
    return load_config(QUICKSTART_CONFIG, base + overrides)


def build_preset(cfg: Config) -> Path:
    """Tokenizer + tiny random GPT-2 saved as a KerasHub preset (once)."""
    preset_dir = Path(cfg.model.preset)
    if (preset_dir / "config.json").is_file():
        return preset_dir
    tokenizer_dir = preset_dir.parent / "tokenizer"
    train_tokenizer("pydoc", tokenizer_dir, TOKENIZER_VOCAB)
    return init_preset(replace(cfg, model=replace(cfg.model, tokenizer=str(tokenizer_dir))), preset_dir)


def quickstart(checkpoints_root: str = "checkpoints", overrides=(), verbose="auto") -> dict:
    cfg = quickstart_config(checkpoints_root, overrides)
    build_preset(cfg)
    prepare("pydoc", cfg.data.shards, load_tokenizer(cfg.model), fractions=(0.8, 0.1, 0.1), seed=cfg.seed,
            progress=verbose != 0)  # -q (verbose 0): no progress bar either
    result = train(cfg, verbose=verbose)
    table = evaluate_run(cfg.run_dir, checkpoints="all", split="test", compare_base=True)
    sample = generate_from_run(cfg.run_dir, SAMPLE_PROMPT, sampler="greedy", max_new_tokens=40)
    return {"run_dir": str(cfg.run_dir), "steps": result.global_step, "stages": result.stages,
            "evaluation": table, "prompt": SAMPLE_PROMPT, "sample": sample}
