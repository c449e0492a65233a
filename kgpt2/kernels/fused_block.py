"""A keras-hub pre-norm decoder block's training call with its residual adds inside the layer norms (JAX).

keras-hub's TransformerDecoder adds each residual in a pass of its own and
reads the block input twice (normalised, and as the residual), so backward
XLA adds that input's two gradients in another pass. With kgpt2's layer-norm
kernels on (train.fused_layer_norm), this call instead

- normalises the block input with `layer_norm_passing_input`, whose
  backward pass adds the residual's gradient to the norm's;
- adds the attention output to the residual inside the second norm
  (`add_layer_norm`: one pass writes the sum and its norm, one pass back);
- projects q, k and v with `qkv_projection` where they are plain Dense
  layers (no adapter, not quantised): their gradients are gathered and
  their bias gradients summed in one pass.

Same layers, variables, dropout and attention path (kgpt2's causal and cuDNN
wrappers included) as keras-hub's call; calls with a cache or a
cross-attention sequence (generation) go to keras-hub's call unchanged.
tests/test_fused_kernels.py checks a model's loss and gradients against
Keras' own step.

    >>> import keras_hub
    >>> from kgpt2.kernels.fused_block import use_fused_blocks
    >>> backbone = keras_hub.models.GPT2Backbone(vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=8,
    ...                                          intermediate_dim=16, max_sequence_length=16)
    >>> len(use_fused_blocks(backbone, kernel="jnp")) in (0, 2)   # 2 on the JAX backend; 0 (unchanged) on TensorFlow
    True
"""

from __future__ import annotations

from kgpt2 import compat
from kgpt2.kernels.layer_norm import add_layer_norm, layer_norm_passing_input
from kgpt2.kernels.qkv_projection import qkv_projection
from kgpt2.model.models import remat_call

RESIDUAL = True  # the residual adds inside the norms (off: keras-hub's call, plain fused norms)
QKV = True  # q, k and v through qkv_projection where they are plain layers


def use_fused_blocks(model, kernel: str = "auto") -> list:
    """Give each pre-norm keras-hub decoder block under `model` the fused training call; returns those blocks.

    Their layer norms are then computed here, from the norm layers' own
    variables; the final norm (and these layers, for keras-hub's call under
    a cache) take kgpt2.kernels.layer_norm.use_fused_layer_norm, which the caller
    applies to the whole model (kgpt2.training.metrics.compile_for_training).
    """
    import keras
    from keras_hub.layers import TransformerDecoder

    if keras.backend.backend() != "jax" or not RESIDUAL:
        return []
    blocks = [layer for layer in compat.sublayers(model) if isinstance(layer, TransformerDecoder)]
    parts = {id(b): compat.decoder_block_call_parts(b) for b in blocks}
    blocks = [b for b in blocks if parts[id(b)]["pre_norm"] and not parts[id(b)]["cross_attention"]]
    for block in blocks:
        block.call = _fused_call(block, kernel, fallback=block.call)
        if getattr(block, "kgpt2_remat", False):  # models.use_remat wrapped the call it replaces
            block.call = remat_call(block.call)
        block.kgpt2_fused_block = True
    return blocks


def _fused_call(block, kernel: str, fallback):
    import keras

    def call(decoder_sequence, decoder_padding_mask=None, decoder_attention_mask=None, use_causal_mask=True,
             training=None, **others):
        if any(value is not None for value in others.values()):  # a cache or an encoder: keras-hub's call
            return fallback(decoder_sequence, decoder_padding_mask=decoder_padding_mask,
                            decoder_attention_mask=decoder_attention_mask, use_causal_mask=use_causal_mask,
                            training=training, **others)
        weights, parts = compat.decoder_block_parts(block), compat.decoder_block_call_parts(block)
        mask = compat.self_attention_mask(block, decoder_sequence, decoder_padding_mask, decoder_attention_mask,
                                          use_causal_mask)
        norm = weights["norm1"]
        x, h = layer_norm_passing_input(decoder_sequence, *_norm_weights(norm), norm.epsilon, kernel)
        a = _self_attention(weights, parts, keras.ops.cast(h, norm.compute_dtype), mask, training, kernel)
        a = parts["attention_dropout"](a, training=training)
        norm = weights["norm2"]
        s, h = add_layer_norm(a, x, *_norm_weights(norm), norm.epsilon, kernel)
        f = weights["proj"](weights["fc"](keras.ops.cast(h, norm.compute_dtype)))
        return parts["feedforward_dropout"](f, training=training) + s

    return call


def _norm_weights(norm):
    import keras

    return keras.ops.convert_to_tensor(norm.gamma), keras.ops.convert_to_tensor(norm.beta)


def _self_attention(weights, parts, h, mask, training, kernel):
    """keras-hub's CachedMultiHeadAttention without a cache, q/k/v projected together where they can be."""
    import keras

    projections = [weights[name] for name in ("query", "key", "value")]
    if not (QKV and all(_plain(layer) for layer in projections)):
        return parts["attention"](query=h, value=h, attention_mask=mask, training=training)
    tensors = [keras.ops.convert_to_tensor(v) for layer in projections for v in (layer.kernel, layer.bias)]
    q, k, v = qkv_projection(h, *tensors, kernel=kernel)
    out, _ = parts["compute_attention"](q, k, v, attention_mask=mask, training=training)
    return weights["out"](out)


def _plain(layer) -> bool:
    """An EinsumDense computing "abc,cde->abde" + bias, as built: no adapter, no quantisation, no activation."""
    import keras

    return (type(layer) is keras.layers.EinsumDense and layer.equation == "abc,cde->abde"
            and layer.bias is not None and layer.quantization_mode is None
            and layer.activation in (None, keras.activations.linear)
            and "call" not in vars(layer) and not getattr(layer, "lora_enabled", False))
