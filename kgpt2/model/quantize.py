"""Quantised base + LoRA ("QLoRA" the Keras way), and what it saves.

`model.quantize = "int8"` (or `"int4"`) makes `kgpt2.model.models.build_causal_lm`
call Keras's own `Model.quantize(mode)` on the loaded backbone before LoRA is
enabled: every Dense/EinsumDense kernel and the token embedding become int8
(int4: two values per byte) with per-channel float scales, frozen; the LoRA
adapters on the attention projections stay float and train as usual. A
checkpoint holds only the adapters (and attention biases), so restoring one
means building the same preset, quantising it the same (deterministic) way,
and loading the adapters: exactly what `kgpt2.run.load_model` does from the
run's config.

This is not bitsandbytes' NF4 with double quantisation: Keras quantises to
int8/int4 with abs-max scales, which is what it supports for every backend.

    >>> from kgpt2.config import ModelConfig
    >>> from kgpt2.model.models import build_backbone
    >>> from kgpt2.model.quantize import quantize_backbone, parameter_bytes
    >>> bb = build_backbone(ModelConfig(preset="scratch", num_layers=1, num_heads=2, hidden_dim=32,
    ...                                 intermediate_dim=64, max_sequence_length=16, vocabulary_size=64))
    >>> before = parameter_bytes(bb)["total"]
    >>> quantize_backbone(bb, "int8")
    >>> parameter_bytes(bb)["total"] < before
    True

Its memory and step-time benchmark (LoRA on a float vs a quantised base) is
benchmarks/quantize_memory.py.
"""

from __future__ import annotations

import contextlib
import gc
import warnings

import numpy as np


def quantize_backbone(backbone, mode: str) -> None:
    """Quantise every quantisable layer of a built backbone in place (Keras `quantize`).

    `mode` is "int8" or "int4"; kgpt2.config checks `model.quantize` when it is read.
    """
    with warnings.catch_warnings(), frozen_heap():
        # Layers Keras cannot quantise (layer norms, position embedding) warn
        # one by one; they simply stay float.
        warnings.simplefilter("ignore")
        # type_check=False: kgpt2's PaddedReversibleEmbedding subclasses
        # keras-hub's ReversibleEmbedding and quantises the same way.
        backbone.quantize(mode, type_check=False)


@contextlib.contextmanager
def frozen_heap():
    """Objects that exist on entry are left out of garbage collections until exit; one collection on exit.

    Keras runs a full `gc.collect()` for every float variable a quantised
    layer deletes (Layer.__delattr__, to free its device buffer at once):
    73 for GPT-2 small, each walking every object TensorFlow or JAX keeps
    alive. Quantising GPT-2 small took 67 s on TensorFlow and 187 s on JAX
    on a 2-core machine, 10-12 s with the heap frozen (same peak RSS: the
    dropped kernels are freed by reference counting; the collection on exit
    takes what cycles held). A heap frozen by the caller stays frozen.
    """
    thawed = gc.get_freeze_count() == 0
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        if thawed:
            gc.unfreeze()
        gc.collect()


def parameter_bytes(model) -> dict:
    """Bytes of the model's variables: total, trainable, and by dtype."""
    by_dtype: dict = {}
    trainable = 0
    for v in model.weights:
        n = int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
        by_dtype[str(v.dtype)] = by_dtype.get(str(v.dtype), 0) + n
        trainable += n if v.trainable else 0
    return {"total": sum(by_dtype.values()), "trainable": trainable, "by_dtype": by_dtype}
