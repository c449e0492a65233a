"""Held-out reward accuracy of every `align.loss` on ../shared/data/preferences with a tiny GPT-2.

The model is the one tests/test_dpo.py trains (`preference_preset`): a
2-layer, 32-wide GPT-2 with a 1,024-token BPE trained on the preference
texts, seed 0. Each loss aligns it for `--steps` steps (batch 8, window 96,
lr 3e-3, 20% of the prompts held out) and the held-out reward accuracy and
margin before and after are printed as a Markdown table (docs/instruction_dpo_qlora.md).
KTO is held out on examples (each pair a desirable and an undesirable one):
its accuracy ranks desirable against undesirable rewards (kgpt2.training.preference_losses.kto_metrics).

    KERAS_BACKEND=jax .venv/bin/python benchmarks/align_losses.py --steps 40
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import keras

from kgpt2.align import align
from kgpt2.config import load_config
from kgpt2.model.models import build_backbone, save_preset
from kgpt2.model.tokenizer import Tokenizer

PREFS = Path(__file__).resolve().parents[2] / "shared/data/preferences/llms-from-scratch-instruction-data-with-preference.json"


def preference_preset(out: Path) -> Path:
    records = json.loads(PREFS.read_text())
    tok = Tokenizer.train([f"{r['instruction']}\n{r['input']}\n{r['chosen']}\n{r['rejected']}" for r in records], 1024)
    cfg = load_config(None, ["model.preset=scratch", "model.num_layers=2", "model.num_heads=2", "model.hidden_dim=32",
                             "model.intermediate_dim=64", "model.max_sequence_length=128",
                             f"model.vocabulary_size={tok.vocab_size}"])
    keras.utils.set_random_seed(0)
    return save_preset(build_backbone(cfg.model), tok, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--losses", nargs="*", default=["dpo", "ipo", "hinge", "simpo", "orpo", "kto"])
    args = p.parse_args()
    root = Path(tempfile.mkdtemp())
    preset = preference_preset(root / "preset")
    print("| align.loss | held-out rows | reward accuracy before | after | margin after | seconds |")
    print("|---|---|---|---|---|---|")
    for loss in args.losses:
        cfg = load_config("dpo", [
            f"model.preset={preset}", f"checkpoints_root={root}", f"run={loss}", "align.init_run=",
            f'align.data=["{PREFS}"]', f"align.steps={args.steps}", "align.heldout_fraction=0.2",
            f"align.loss={loss}", "data.sequence_length=96", "lora.enabled=false", "train.batch_size=8",
            "train.learning_rate=0.003", "train.warmup_steps=5", "train.precision=float32", "train.device=cpu"])
        start = time.perf_counter()
        r = align(cfg, verbose=0)
        b, a = r["heldout_before"], r["heldout_after"]
        print(f"| {loss} | {a['pairs']} | {b['reward_accuracy']:.3f} | {a['reward_accuracy']:.3f} | "
              f"{a['reward_margin']:.4f} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
