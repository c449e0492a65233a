"""A GPT-2 forward pass over packed windows: attention confined to each example, positions restarting.

Several short examples share one window (kgpt2.data.packing), each with its
own segment id (1, 2, ...; 0 = padding) and positions counting from 0 in
each. `packed_logits` runs the KerasHub GPT-2 layers with a [B, T, T] mask
"same segment" that `TransformerDecoder` merges with its causal mask, and the
position embedding looked up at the given positions, so every example sees
exactly what it would see alone (tests/test_packing.py checks the logits).
This is what TRL's padding-free packing, transformers'
`DataCollatorWithFlattening` and torchtune's packed datasets do; KerasHub's
GPT2Backbone has no input for it (its functional graph takes token_ids and
a padding mask), so the layers are called here one by one. KerasHub parts
used: `backbone.token_embedding` (and its `reverse=True` for the logits),
`position_embedding.position_embeddings`, `embeddings_add`,
`embeddings_dropout`, `transformer_layers` (`decoder_attention_mask`) and
`layer_norm`. The fused causal kernel of kgpt2.model.models is bypassed inside
(it would drop the mask): XLA's masked attention runs instead.

    >>> import numpy as np
    >>> from keras import ops
    >>> from kgpt2.model.packed_attention import segment_mask
    >>> ops.convert_to_numpy(segment_mask(np.array([[1, 1, 2, 0]]))).astype(int)[0].tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
"""

from __future__ import annotations

import keras
from keras import ops

from kgpt2 import compat
from kgpt2.model.models import KEEP_ATTENTION_MASK


def segment_mask(segment_ids):
    """[B, T, T]: query i may attend key j when both are in the same segment (padding attends only itself)."""
    same = ops.equal(ops.expand_dims(segment_ids, 2), ops.expand_dims(segment_ids, 1))
    pad = ops.expand_dims(ops.equal(segment_ids, 0), 2)
    eye = ops.expand_dims(ops.eye(ops.shape(segment_ids)[1], dtype="bool"), 0)
    return ops.where(pad, ops.logical_and(same, eye), same)


def packed_hidden(backbone, token_ids, segment_ids, positions, training=False):
    """The final hidden states [B, T, H] of a GPT2Backbone over packed windows."""
    b = backbone
    token = KEEP_ATTENTION_MASK.set(True)
    try:
        x = b.token_embedding(token_ids)
        pos = ops.take(b.position_embedding.position_embeddings, ops.cast(positions, "int32"), axis=0)
        x = b.embeddings_add((x, ops.cast(pos, x.dtype)))
        x = b.embeddings_dropout(x, training=training)
        mask = segment_mask(segment_ids)
        for layer in b.transformer_layers:
            x = layer(x, decoder_attention_mask=mask, training=training)
        return b.layer_norm(x)
    finally:
        KEEP_ATTENTION_MASK.reset(token)


def packed_logits(causal_lm, token_ids, segment_ids, positions, training=False):
    """Logits [B, T, V] of a GPT2CausalLM over packed windows."""
    b = causal_lm.backbone
    return b.token_embedding(packed_hidden(b, token_ids, segment_ids, positions, training), reverse=True)


class PackedCausalLM(keras.Model):
    """A GPT2CausalLM that takes packed windows ({token_ids, segment_ids, positions}) for `fit`.

    It shares every variable with the wrapped model, so checkpoints and the
    merged export are the plain model's. `fit` and `evaluate` read a grain
    dataset as GPT2CausalLM's do (kgpt2.compat.declare_steps).
    """

    def __init__(self, causal_lm, **kwargs):
        super().__init__(**kwargs)
        self.causal_lm = causal_lm

    @property
    def backbone(self):
        return self.causal_lm.backbone

    def hidden_states(self, inputs, training=False):
        """What `backbone(inputs)` is to a GPT2CausalLM (the chunked loss computes the logits from it)."""
        return packed_hidden(self.backbone, inputs["token_ids"], inputs["segment_ids"], inputs["positions"], training)

    def fit(self, x=None, y=None, **kwargs):
        x, steps = compat.declare_steps(x, kwargs.get("steps_per_epoch"), kwargs.get("epochs", 1))
        return super().fit(x, y, **(kwargs | ({"steps_per_epoch": steps} if steps is not None else {})))

    def evaluate(self, x=None, y=None, **kwargs):
        x, steps = compat.declare_steps(x, kwargs.get("steps"))
        return super().evaluate(x, y, **(kwargs | ({"steps": steps} if steps is not None else {})))

    def call(self, inputs, training=False):
        return packed_logits(self.causal_lm, inputs["token_ids"], inputs["segment_ids"], inputs["positions"], training)


def for_windows(causal_lm, windows: str):
    """The model that trains and scores `data.windows`' batches: a `PackedCausalLM` over
    `causal_lm` for "packed_examples", else `causal_lm` itself (its fused causal kernel kept)."""
    return PackedCausalLM(causal_lm) if windows == "packed_examples" else causal_lm
