"""Quantised base + LoRA ("QLoRA" the Keras way), and what it saves.

`model.quantize = "int8"` (or `"int4"`) makes `kgpt2.models.build_causal_lm`
call Keras's own `Model.quantize(mode)` on the loaded backbone before LoRA is
enabled: every Dense/EinsumDense kernel and the token embedding become int8
(int4: two values per byte) with per-channel float scales, frozen; the LoRA
adapters on the attention projections stay float and train as usual. A
checkpoint holds only the adapters (and attention biases), so restoring one
means building the same preset, quantising it the same (deterministic) way,
and loading the adapters: exactly what `kgpt2.runs.load_model` does from the
run's config.

This is not bitsandbytes' NF4 with double quantisation: Keras quantises to
int8/int4 with abs-max scales, which is what it supports for every backend.

    >>> from kgpt2.config import ModelConfig
    >>> from kgpt2.models import build_backbone
    >>> from kgpt2.quantize import quantize_backbone, parameter_bytes
    >>> bb = build_backbone(ModelConfig(preset="scratch", num_layers=1, num_heads=2, hidden_dim=32,
    ...                                 intermediate_dim=64, max_sequence_length=16, vocabulary_size=64))
    >>> before = parameter_bytes(bb)["total"]
    >>> quantize_backbone(bb, "int8")
    >>> parameter_bytes(bb)["total"] < before
    True

Benchmark (memory and step time of LoRA on a float vs a quantised base):

    python -m kgpt2.quantize --layers 12 --hidden 768 --seq 256 --batch 4 --steps 5
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def quantize_backbone(backbone, mode: str) -> None:
    """Quantise every quantisable layer of a built backbone in place (Keras `quantize`).

    `mode` is "int8" or "int4"; kgpt2.config checks `model.quantize` when it is read.
    """
    import warnings

    with warnings.catch_warnings():
        # Layers Keras cannot quantise (layer norms, position embedding) warn
        # one by one; they simply stay float.
        warnings.simplefilter("ignore")
        # type_check=False: kgpt2's PaddedReversibleEmbedding subclasses
        # keras-hub's ReversibleEmbedding and quantises the same way.
        backbone.quantize(mode, type_check=False)


def parameter_bytes(model) -> dict:
    """Bytes of the model's variables: total, trainable, and by dtype."""
    by_dtype: dict = {}
    trainable = 0
    for v in model.weights:
        n = int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
        by_dtype[str(v.dtype)] = by_dtype.get(str(v.dtype), 0) + n
        trainable += n if v.trainable else 0
    return {"total": sum(by_dtype.values()), "trainable": trainable, "by_dtype": by_dtype}


def benchmark(quantize: str = "", *, layers: int = 2, hidden: int = 64, heads: int = 2, vocab: int = 50257,
              seq: int = 128, batch: int = 4, steps: int = 5, rank: int = 8) -> dict:
    """Parameter bytes and mean train-step time of LoRA (rank `rank`, query+value)
    on a random GPT-2 of the given shape, with the base float32 or quantised."""
    import keras
    import keras_hub

    from kgpt2.config import load_config
    from kgpt2.metrics import compile_lm
    from kgpt2.models import build_causal_lm

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
    import kgpt2  # noqa: F401  (chooses the backend first)

    main()
