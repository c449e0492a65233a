"""Attention dropout inside cuDNN's fused causal attention (`train.attention_dropout_kernel = "cudnn"`).

With dropout on the attention probabilities, Keras' MultiHeadAttention
leaves its fused `dot_product_attention` path (which has no dropout
argument) for a masked softmax, a threefry mask and two batched matmuls:
at the Shakespeare shape on an H200 that path makes the whole step 31%
slower than the same model without attention dropout (docs/benchmarks.md).
cuDNN's fused attention can drop attention probabilities in the kernel,
as torch's SDPA does for nanoGPT; JAX exposes it only in
`jax._src.cudnn.fused_attention_stablehlo` (no public wrapper takes a
dropout rate), so this calls that function for training steps with
dropout and keeps Keras' own path for everything else (evaluation,
decoding, packed windows, float32).

What differs from Keras' dropout, and why only the shakespeare_char recipe makes it its default ("auto"):
cuDNN draws the masks from its own Philox stream, seeded by a compile-time
constant (one per layer here) and advanced by a counter XLA keeps per
process. The masks change every step (checked on an H200 by
benchmarks/attention_dropout_facts.py), but no checkpoint holds that
counter, so a resumed run draws other masks than an uninterrupted one
would: same rate, same training dynamics, not the same bits. Runs with the
default ("xla") resume bit-exactly. JAX on a GPU only; elsewhere a warning
and Keras' path ("auto": no warning; the shakespeare_char recipe's setting).

    >>> from kgpt2.kernels.cudnn_attention import use_cudnn_dropout_attention
    >>> import keras_hub
    >>> backbone = keras_hub.models.GPT2Backbone(vocabulary_size=64, num_layers=1, num_heads=2, hidden_dim=8,
    ...                                          intermediate_dim=16, max_sequence_length=16, dropout=0.1)
    >>> use_cudnn_dropout_attention(backbone, seed=0) in (0, 1)   # 1 on a JAX GPU, 0 (a warning) elsewhere
    True
"""

from __future__ import annotations

import logging

from kgpt2 import compat


def cudnn_available() -> bool:
    """True on the JAX backend with a GPU and JAX's cuDNN attention module."""
    import keras

    if keras.backend.backend() != "jax":
        return False
    import jax

    try:
        from jax._src.cudnn import fused_attention_stablehlo  # noqa: F401 - private: may move between JAX versions
    except ImportError:
        return False
    return jax.default_backend() == "gpu"


def _placed_on_a_gpu() -> bool:
    """Whether the model being traced runs on a GPU: not under a CPU device scope (`train.device = "cpu"` on a
    GPU machine enters `keras.device("cpu:0")`, which sets JAX's default device); the backend was checked at build."""
    import jax

    device = jax.config.jax_default_device  # None, a jax.Device or a platform name
    if device is None:
        return True
    return (device if isinstance(device, str) else device.platform) in ("gpu", "cuda", "rocm")


def wants_cudnn_dropout(setting: str) -> bool:
    """Whether `train.attention_dropout_kernel = setting` routes attention dropout to cuDNN.

    "cudnn" always asks (and warns where it cannot run); "auto" asks only where cuDNN can run.

        >>> wants_cudnn_dropout("xla"), wants_cudnn_dropout("cudnn")
        (False, True)
    """
    return setting == "cudnn" or (setting == "auto" and cudnn_available())


def use_cudnn_dropout_attention(backbone, seed: int, keep_mask=None) -> int:
    """Training-time self-attention with dropout through cuDNN's causal kernel; returns the layers changed.

    `keep_mask`: a context variable that is true while the attention mask must reach the kernel
    (kgpt2.model.models.KEEP_ATTENTION_MASK, set for packed windows); those calls keep Keras' path.
    """
    if not cudnn_available():
        logging.getLogger("kgpt2").warning(
            "train.attention_dropout_kernel = \"cudnn\" needs the JAX backend on a GPU; attention dropout "
            "stays on Keras' path")
        return 0
    from jax._src.cudnn.fused_attention_stablehlo import MaskType, dot_product_attention

    layers = compat.self_attention_layers(backbone)
    for index, attention in enumerate(layers):

        def wrap(compute, _layer=attention, _seed=seed * 1009 + index):  # distinct constant seed per layer
            def call(query, key, value, attention_mask=None, training=None, return_attention_scores=False,
                     use_causal_mask=False):
                rate = compat.attention_dropout(_layer)
                # Full-length training windows only, right-padded as everywhere in kgpt2 (so the causal mask
                # is exact for every real token, as in models.use_causal_attention); cuDNN needs 16-bit inputs.
                packed = keep_mask is not None and keep_mask.get()
                if (training and rate > 0 and query.shape[1] == key.shape[1] and not return_attention_scores
                        and not packed and str(query.dtype) in ("bfloat16", "float16") and _placed_on_a_gpu()):
                    out = dot_product_attention(query, key, value, scale=_layer._inverse_sqrt_key_dim,
                                                mask_type=MaskType.CAUSAL, dropout_rate=float(rate), seed=_seed,
                                                qkv_layout="BTNH")
                    return out, None
                return compute(query, key, value, attention_mask=attention_mask, training=training,
                               return_attention_scores=return_attention_scores, use_causal_mask=use_causal_mask)
            return call

        compat.wrap_compute_attention(attention, wrap)
    return len(layers)
