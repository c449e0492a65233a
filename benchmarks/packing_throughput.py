"""Instruction data packed vs one example per window: padding share and training tokens/s.

Alpaca (../shared/data/alpaca/alpaca_5000.json) encoded with GPT-2's
tokenizer and the Alpaca template, windows of `--seq` tokens. Unpacked: one
example per window, padded, the plain GPT2CausalLM with its padding mask
(kgpt2's fused causal kernel). Packed: examples first-fit into windows
(kgpt2.data.packing), attention confined per example
(kgpt2.packed_attention.PackedCausalLM, XLA's masked attention). The model is a random GPT-2 of
`--layers` x `--width` with GPT-2's vocabulary; both run `fit` for `--steps`
steps after a compiling warm-up, and the response (trained) tokens per second
are compared, since both see the same examples' targets.

    KERAS_BACKEND=jax .venv/bin/python benchmarks/packing_throughput.py --examples 512 --steps 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np

from kgpt2.config import load_config
from kgpt2.data.examples import encode_example
from kgpt2.data.packing import pack_examples, padding_fraction
from kgpt2.models import build_backbone, use_causal_attention
from kgpt2.packed_attention import PackedCausalLM
from kgpt2.templates import format_prompt
from kgpt2.tokenizer import Tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def alpaca_examples(n: int):
    tok = Tokenizer.from_files(SHARED / "gpt2-tokenizer/encoder.json", SHARED / "gpt2-tokenizer/vocab.bpe")
    records = json.loads((SHARED / "alpaca/alpaca_5000.json").read_text())[:n]
    return [encode_example(tok, format_prompt(r["instruction"], r["input"]), r["output"]) for r in records]


def timed_fit(model, x, y, w, batch: int, steps: int) -> float:
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=loss)
    rows = np.resize(np.arange(len(y)), batch * (steps + 1))
    take = lambda a, r: {k: v[r] for k, v in a.items()} if isinstance(a, dict) else a[r]  # noqa: E731
    model.fit(take(x, rows[:batch]), y[rows[:batch]], sample_weight=w[rows[:batch]], batch_size=batch, verbose=0)
    r = rows[batch:]
    start = time.perf_counter()
    model.fit(take(x, r), y[r], sample_weight=w[r], batch_size=batch, verbose=0)
    return time.perf_counter() - start, float(w[r].sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=512)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--width", type=int, default=128)
    a = p.parse_args()
    examples = alpaca_examples(a.examples)
    cfg = load_config(None, ["model.preset=scratch", f"model.num_layers={a.layers}", "model.num_heads=4",
                             f"model.hidden_dim={a.width}", f"model.intermediate_dim={4 * a.width}",
                             f"model.max_sequence_length={a.seq}", "model.dropout=0.0"])
    keras.utils.set_random_seed(0)
    lm = keras_hub_causal_lm(build_backbone(cfg.model))
    one = [pack_examples([e], a.seq) for e in examples]
    unpacked = {k: np.concatenate([o[k] for o in one]) for k in one[0]}
    packed = pack_examples(examples, a.seq)
    rows = []
    for name, w, model, x in (
            ("one example per window", unpacked, lm,
             {"token_ids": unpacked["token_ids"], "padding_mask": unpacked["segment_ids"] > 0}),
            ("packed", packed, PackedCausalLM(lm),
             {k: packed[k] for k in ("token_ids", "segment_ids", "positions")})):
        seconds, trained = timed_fit(model, x, w["targets"], w["weights"], a.batch, a.steps)
        rows.append((name, len(w["targets"]), padding_fraction(w), trained / seconds, a.batch * a.steps * a.seq / seconds))
    print(f"| {a.examples} Alpaca examples, window {a.seq} | windows | padding | response tokens/s | positions/s |")
    print("|---|---|---|---|---|")
    for name, n, pad, tps, pps in rows:
        print(f"| {name} | {n} | {pad:.1%} | {tps:,.0f} | {pps:,.0f} |")


def keras_hub_causal_lm(backbone):
    import keras_hub

    use_causal_attention(backbone)  # as kgpt2 trains (model.causal_attention); the packed forward keeps its mask
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


if __name__ == "__main__":
    main()
