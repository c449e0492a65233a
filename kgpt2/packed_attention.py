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
`layer_norm`. The fused causal kernel of kgpt2.models is bypassed inside
(it would drop the mask): XLA's masked attention runs instead.

    >>> import numpy as np
    >>> from keras import ops
    >>> from kgpt2.packed_attention import segment_mask
    >>> ops.convert_to_numpy(segment_mask(np.array([[1, 1, 2, 0]]))).astype(int)[0].tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
"""

from __future__ import annotations

import keras
from keras import ops

from kgpt2.models import KEEP_ATTENTION_MASK


def segment_mask(segment_ids):
    """[B, T, T]: query i may attend key j when both are in the same segment (padding attends only itself)."""
    same = ops.equal(ops.expand_dims(segment_ids, 2), ops.expand_dims(segment_ids, 1))
    pad = ops.expand_dims(ops.equal(segment_ids, 0), 2)
    eye = ops.expand_dims(ops.eye(ops.shape(segment_ids)[1], dtype="bool"), 0)
    return ops.where(pad, ops.logical_and(same, eye), same)


def packed_logits(causal_lm, token_ids, segment_ids, positions, training=False):
    """Logits [B, T, V] of a GPT2CausalLM over packed windows."""
    b = causal_lm.backbone
    token = KEEP_ATTENTION_MASK.set(True)
    try:
        x = b.token_embedding(token_ids)
        pos = ops.take(b.position_embedding.position_embeddings, ops.cast(positions, "int32"), axis=0)
        x = b.embeddings_add((x, ops.cast(pos, x.dtype)))
        x = b.embeddings_dropout(x, training=training)
        mask = segment_mask(segment_ids)
        for layer in b.transformer_layers:
            x = layer(x, decoder_attention_mask=mask, training=training)
        x = b.layer_norm(x)
        return b.token_embedding(x, reverse=True)
    finally:
        KEEP_ATTENTION_MASK.reset(token)


class PackedCausalLM(keras.Model):
    """A GPT2CausalLM that takes packed windows ({token_ids, segment_ids, positions}) for `fit`.

    It shares every variable with the wrapped model, so checkpoints and the
    merged export are the plain model's.
    """

    def __init__(self, causal_lm, **kwargs):
        super().__init__(**kwargs)
        self.causal_lm = causal_lm

    def call(self, inputs, training=False):
        return packed_logits(self.causal_lm, inputs["token_ids"], inputs["segment_ids"], inputs["positions"], training)
