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

from kgpt2.errors import UserError


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


# What `kgpt2 export` measures a dequantised export on: ordinary English, which any byte-level BPE encodes.
PROBE_TEXT = ("The patients were randomly assigned to two groups. After six months, the results showed that the "
              "treatment had reduced the number of admissions, and the effect was larger in older patients.")


def probe_ids(tokenizer, vocabulary_size: int, length: int) -> np.ndarray:
    """PROBE_TEXT's ids (at most `length`); a character tokenizer without its letters gets fixed ids spread
    over the vocabulary instead."""
    try:
        ids = np.asarray(tokenizer.encode(PROBE_TEXT), "int32")[:length]
    except UserError:  # a character vocabulary without these characters
        ids = np.zeros(0, "int32")
    if len(ids) < 2:
        ids = (np.arange(min(length, 48), dtype="int64") * 7919 % vocabulary_size).astype("int32")
    return ids


def dequantisation_check(model, plain_backbone, tokenizer) -> dict:
    """How closely `plain_backbone` (the float GPT2Backbone an export writes) computes what the run's
    quantised `model` (a GPT2CausalLM) does, on `probe_ids`: the largest logit difference, the run's largest
    |logit| beside it, and at how many positions the most likely next token is the same.

    They differ because Keras's int8 layers also round each input row to int8 (abs-max per token) before
    the product; int4 layers compute with the dequantised kernel, so an int4 base differs by float rounding.
    """
    vocab = plain_backbone.vocabulary_size
    ids = probe_ids(tokenizer, vocab, plain_backbone.max_sequence_length)[None]
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
    run = np.asarray(model(x), "float32")[0, :, :vocab]  # the run's vocabulary padding cut off
    plain = np.asarray(plain_backbone.token_embedding(plain_backbone(x), reverse=True), "float32")[0]
    return {"positions": int(ids.shape[1]), "max_logit_difference": float(np.abs(plain - run).max()),
            "largest_logit": float(np.abs(run).max()),
            "greedy_agree": int((plain.argmax(-1) == run.argmax(-1)).sum())}
