"""Memory and step time of LoRA on a float32 base vs an int8 / int4 base (kgpt2.model.quantize).

One JSON line per mode: parameter bytes by dtype, mean train-step time and
the loss, on a random GPT-2 of the given shape (docs/benchmarks.md has the
results and the machines):

    KERAS_BACKEND=jax python benchmarks/quantize_memory.py --layers 4 --hidden 256 --seq 128 --batch 4 --steps 5
"""

from __future__ import annotations

import argparse
import json
import time

import keras
import keras_hub
import numpy as np

import kgpt2  # noqa: F401  (chooses the Keras backend before keras is imported)
from kgpt2.config import load_config
from kgpt2.model.models import build_causal_lm
from kgpt2.model.quantize import parameter_bytes
from kgpt2.training.metrics import compile_lm


def benchmark(quantize: str = "", *, layers: int = 2, hidden: int = 64, heads: int = 2, vocab: int = 50257,
              seq: int = 128, batch: int = 4, steps: int = 5, rank: int = 8) -> dict:
    """Parameter bytes and mean train-step time of LoRA (rank `rank`, query+value)
    on a random GPT-2 of the given shape, with the base float32 or quantised."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    cfg = load_config(None, ["model.preset=scratch", f"model.num_layers={layers}", f"model.num_heads={heads}",
                             f"model.hidden_dim={hidden}", f"model.intermediate_dim={4 * hidden}",
                             f"model.max_sequence_length={max(seq, 16)}", f"model.vocabulary_size={vocab}",
                             f"data.sequence_length={seq}", f"lora.rank={rank}", f'model.quantize="{quantize}"'])
    model = build_causal_lm(cfg)
    compile_lm(model, keras.optimizers.AdamW(1e-4))
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(0, vocab, (batch, seq)).astype("int32"),
         "padding_mask": np.ones((batch, seq), dtype=bool)}
    y = rng.integers(0, vocab, (batch, seq)).astype("int32")
    model.train_on_batch(x, y)  # compile
    model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)
    step_s = (time.perf_counter() - start) / steps
    return {"quantize": quantize or "float32", "backend": keras.backend.backend(),
            "keras_hub": keras_hub.__version__, "shape": f"{layers}x{hidden} vocab {vocab}",
            "seq": seq, "batch": batch, "step_s": round(step_s, 4),
            "loss": float(np.asarray(loss).ravel()[0]), "bytes": parameter_bytes(model.backbone)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--modes", default=",int8,int4", help="comma-separated; empty = float32")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=0, help="default hidden // 64 (at least 1)")
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args(argv)
    for mode in a.modes.split(","):
        r = benchmark(mode, layers=a.layers, hidden=a.hidden, heads=a.heads or max(1, a.hidden // 64),
                      vocab=a.vocab, seq=a.seq, batch=a.batch, steps=a.steps)
        print(json.dumps(r))


if __name__ == "__main__":
    main()
