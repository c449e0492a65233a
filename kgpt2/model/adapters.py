"""LoRA adapters computed as PEFT computes them: alpha, dropout, rsLoRA, DoRA, any linear layer.

`enable_lora(backbone, cfg.lora)` freezes the backbone and gives each target
layer (a Keras Dense or EinsumDense) an adapter:

    y = base(x) + scale * B(A(dropout(x)))             LoRA, scale = alpha / rank
                                                       rsLoRA: alpha / sqrt(rank)
    y = bias + m / ||W + scale*AB||  * (x W + scale * B(A(dropout(x))))    DoRA

with A of shape (inputs, rank) and B (rank, outputs), the kernel read as one
matrix (inputs, outputs): a query kernel (768, 12, 64) is the (768, 768)
matrix PEFT sees in GPT-2's `c_attn`. Keras's own `enable_lora` gives each of
the 12 heads its own A and shares B across heads, which no PEFT adapter can
express, has no dropout and no DoRA; so kgpt2 adds the adapter to the layer
(same variable names, `lora_kernel_a` / `lora_kernel_b`, plus
`dora_magnitude`: ordinary trainable variables checkpoints pick up). The
norm in DoRA is per output and kept out of the gradient, as in Liu et al.
(2024, section 4.3) and PEFT. A DoRA magnitude starts at the norm of W.

    >>> import keras
    >>> from kgpt2.model.adapters import enable_lora, merged_backbone
    >>> from kgpt2.config import LoraConfig, ModelConfig
    >>> from kgpt2.model.models import build_backbone
    >>> bb = build_backbone(ModelConfig(preset="scratch", num_layers=1, num_heads=2, hidden_dim=32,
    ...                                 intermediate_dim=64, max_sequence_length=16, vocabulary_size=64))
    >>> enable_lora(bb, LoraConfig(rank=4, targets=["all-linear"], use_dora=True))
    >>> sorted({v.name for v in bb.trainable_weights})
    ['bias', 'dora_magnitude', 'lora_kernel_a', 'lora_kernel_b']
    >>> any("lora" in v.path for v in merged_backbone(bb).weights)
    False
"""

from __future__ import annotations

import math

import keras
import keras_hub
import numpy as np
from keras import ops

from kgpt2 import compat
from kgpt2.config import ALL_LINEAR, LORA_TARGETS, LoraConfig
from kgpt2.errors import UserError


def resolve_targets(targets) -> tuple:
    """`lora.targets` as layer names; refuses anything else in one sentence."""
    names = list(targets)
    if ALL_LINEAR in names:
        names = [n for n in names if n != ALL_LINEAR] + list(LORA_TARGETS)
    unknown = [n for n in names if n not in LORA_TARGETS]
    if unknown or not names:
        raise UserError(f"lora.targets must be some of {', '.join(LORA_TARGETS)} or \"{ALL_LINEAR}\"; got {list(targets)}")
    return tuple(t for t in LORA_TARGETS if t in names)


def lora_scale(lora: LoraConfig) -> float:
    return lora.alpha / (math.sqrt(lora.rank) if lora.use_rslora else lora.rank)


def kernel_layout(layer) -> tuple[tuple, tuple]:
    """(input shape, output shape) of a Dense/EinsumDense kernel read as a matrix."""
    shape = tuple(int(d) for d in layer.kernel.shape)  # `kernel` unpacks int4
    if not isinstance(layer, keras.layers.EinsumDense):
        return shape[:1], shape[1:]
    inputs, rest = layer.equation.split(",")
    kernel_axes = rest.split("->")[0]
    n_in = sum(axis in inputs for axis in kernel_axes)
    if any(axis not in inputs for axis in kernel_axes[:n_in]):
        raise UserError(f"layer {layer.name} ({layer.equation}) does not contract its leading kernel axes; "
                        "kgpt2 cannot put an adapter on it")
    return shape[:n_in], shape[n_in:]


class _Adapted:
    """Mixed in front of a Dense/EinsumDense class: base output + adapter, then the activation."""

    def call(self, inputs, training=None):
        return self._with_adapter(inputs, super().call(inputs, training=training), training)

    def quantized_call(self, inputs, training=None):
        return self._with_adapter(inputs, super().quantized_call(inputs, training=training), training)

    def save_own_variables(self, store):
        """Keras's own saving (save_weights, save_to_preset) gets the merged kernel, as with Keras LoRA."""
        if self.quantization_mode:
            raise UserError("Keras cannot save a quantised layer with its adapter merged; "
                            "use kgpt2.model.adapters.merged_backbone (what `kgpt2 export` does)")
        super().save_own_variables(store)
        store["0"] = effective_kernel(self)  # Dense/EinsumDense store the kernel first

    def _adapter_delta(self, inputs, training):
        x = inputs
        if self.lora_dropout > 0 and training:
            x = keras.random.dropout(x, self.lora_dropout, seed=self.lora_seed_generator)
        n_in = len(self.lora_in_shape)
        if n_in > 1:
            x = ops.reshape(x, tuple(ops.shape(x)[:-n_in]) + (self.lora_kernel_a.shape[0],))
        delta = ops.matmul(ops.matmul(x, self.lora_kernel_a), self.lora_kernel_b) * self.lora_scale
        if len(self.lora_out_shape) > 1:
            delta = ops.reshape(delta, tuple(ops.shape(delta)[:-1]) + self.lora_out_shape)
        return delta

    def _with_adapter(self, inputs, base, training):
        delta = self._adapter_delta(inputs, training)
        if self.use_dora:
            scale = ops.reshape(self.dora_magnitude / dora_norm(self), self.lora_out_shape)
            bias = 0.0 if self.bias is None else self.bias
            base = bias + scale * (base - bias)
            delta = scale * delta
        out = base + delta
        return out if self.lora_activation is None else self.lora_activation(out)


def dora_norm(layer):
    """Per-output norm of W + scale * AB (PEFT's weight norm), outside the gradient."""
    w = ops.reshape(layer.kernel, (layer.lora_kernel_a.shape[0], layer.lora_kernel_b.shape[1]))
    merged = w + layer.lora_scale * ops.matmul(layer.lora_kernel_a, layer.lora_kernel_b)
    return ops.stop_gradient(ops.sqrt(ops.sum(ops.square(merged), axis=0)))


_CLASSES: dict = {}


def _adapted_class(base: type) -> type:
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Lora{base.__name__}", (_Adapted, base), {"__module__": __name__})
    return _CLASSES[base]


def add_adapter(layer, lora: LoraConfig) -> None:
    """Give a built Dense/EinsumDense layer a LoRA (or DoRA) adapter, in place."""
    in_shape, out_shape = kernel_layout(layer)
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    if lora.use_dora and layer.quantization_mode:
        raise UserError("DoRA needs the float kernel for its norm; turn off model.quantize or lora.use_dora")
    with compat.unlocked_tracker(layer):  # Keras's own enable_lora adds its variables to a built layer so
        bound = 1.0 / math.sqrt(n_in)  # PEFT's kaiming_uniform(a=sqrt(5)) for lora_A
        layer.lora_kernel_a = layer.add_weight(name="lora_kernel_a", shape=(n_in, lora.rank),
                                               initializer=keras.initializers.RandomUniform(-bound, bound))
        layer.lora_kernel_b = layer.add_weight(name="lora_kernel_b", shape=(lora.rank, n_out), initializer="zeros")
        if lora.use_dora:
            norm = np.linalg.norm(np.asarray(layer.kernel, "float32").reshape(n_in, n_out), axis=0)
            layer.dora_magnitude = layer.add_weight(name="dora_magnitude", shape=(n_out,),
                                                    initializer=keras.initializers.Constant(norm))
        if lora.dropout > 0:
            layer.lora_seed_generator = keras.random.SeedGenerator()
    layer.lora_in_shape, layer.lora_out_shape = in_shape, out_shape
    layer.lora_scale, layer.lora_dropout, layer.use_dora = lora_scale(lora), lora.dropout, lora.use_dora
    # The adapter adds before the activation (GPT-2's MLP applies GELU after c_fc + LoRA).
    layer.lora_activation, layer.activation = layer.activation, None
    compat.retype_layer(layer, _adapted_class(type(layer)))


def enable_lora(backbone, lora: LoraConfig) -> None:
    """Freeze `backbone` and add adapters to every layer named in `lora.targets`.

    Biases of adapted layers stay trainable (as with Keras's enable_lora).
    Keeps keras-hub's LoRA bookkeeping, so `backbone.save_lora_weights(...)`
    and `load_lora_weights` work on plain and rsLoRA runs; a DoRA run refuses
    them, as keras-hub's file has no place for the magnitudes.
    """
    targets = resolve_targets(lora.targets)
    if lora.rank < 1:
        raise UserError(f"lora.rank must be at least 1, got {lora.rank}")
    if not 0 <= lora.dropout < 1:
        raise UserError(f"lora.dropout must be in [0, 1), got {lora.dropout}")
    backbone.trainable = True
    layers = [layer for layer in compat.sublayers(backbone) if layer.weights]
    for layer in layers:
        layer.trainable = False
    enabled = []
    for index, layer in enumerate(layers):
        if layer.name in targets and isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
            add_adapter(layer, lora)
            layer.trainable = True
            if not layer.quantization_mode:
                layer.kernel.trainable = False  # a float kernel is a variable; a quantised one is frozen already
            enabled.append(index)
    # keras-hub's Backbone.save_lora_weights/load_lora_weights read these two.
    compat.set_lora_bookkeeping(backbone, enabled, lora.rank)
    if lora.use_dora:
        def refuse(*_):
            raise UserError("keras-hub's .lora.h5 files hold no DoRA magnitudes; "
                            "use kgpt2's checkpoints or `kgpt2 export --to peft`")
        backbone.save_lora_weights = backbone.load_lora_weights = refuse


def is_adapted(layer) -> bool:
    return isinstance(layer, _Adapted)


def effective_kernel(layer) -> np.ndarray:
    """The float kernel a Dense/EinsumDense layer computes with: dequantised, adapter merged.

    Read off the layer's own forward pass on the identity (minus its output
    on zeros, the bias), so it holds for float, int8 and int4 kernels alike
    without kgpt2 re-implementing each of Keras's quantisation layouts. Each
    output is one weight times 1, so the read is exact; int8 layers also
    quantise their input, which is exact for the rows of the identity.
    """
    in_shape, out_shape = kernel_layout(layer)
    n_in = int(np.prod(in_shape))
    rank = len(layer.equation.split(",")[0]) if isinstance(layer, keras.layers.EinsumDense) else 2
    lead = (1,) * (rank - len(in_shape) - 1)
    eye = np.eye(n_in, dtype="float32").reshape(lead + (n_in,) + in_shape)
    zeros = np.zeros(lead + (1,) + in_shape, "float32")
    name = "lora_activation" if is_adapted(layer) else "activation"
    activation = getattr(layer, name)
    setattr(layer, name, None)  # the linear part only
    try:
        out = np.asarray(layer(eye, training=False), "float32").reshape(n_in, -1)
        bias = np.asarray(layer(zeros, training=False), "float32").reshape(1, -1)
    finally:
        setattr(layer, name, activation)
    return (out - bias).reshape(in_shape + out_shape)


def _float_weights(layer, vocabulary_size: int) -> dict:
    """Variable name -> float value of `layer` as a plain keras-hub layer would hold it."""
    if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
        values = {"kernel": effective_kernel(layer)}
        if layer.bias is not None:
            values["bias"] = np.asarray(layer.bias, "float32")
        return values
    if isinstance(layer, keras.layers.Embedding) and layer.quantization_mode:
        # The lookup dequantises its own rows.
        return {"embeddings": np.asarray(layer(np.arange(vocabulary_size)), "float32")}
    values = {v.name: np.asarray(v, "float32") for v in layer.weights}
    if isinstance(layer, keras.layers.Embedding) and "embeddings" in values:
        values["embeddings"] = values["embeddings"][:vocabulary_size]
    return values


def merged_backbone(backbone) -> keras_hub.models.GPT2Backbone:
    """A plain float32 GPT2Backbone computing what `backbone` computes.

    Adapters (LoRA, rsLoRA, DoRA) are merged, int8/int4 kernels dequantised
    and kgpt2's vocabulary padding cut off, so the result saves to a file or
    preset that a plain keras-hub GPT2Backbone (or transformers, after
    `export_to_transformers`) loads.
    """
    vocab = getattr(backbone, "real_vocabulary_size", backbone.vocabulary_size)
    config = dict(backbone.get_config(), vocabulary_size=vocab, dtype="float32")
    plain = keras_hub.models.GPT2Backbone.from_config(config)
    source = [layer for layer in compat.sublayers(backbone) if layer.weights]
    target = [layer for layer in compat.sublayers(plain) if layer.weights]
    if [s.name for s in source] != [t.name for t in target]:
        raise UserError("this model's layers do not match a plain GPT-2 backbone; kgpt2 cannot merge it")
    for src, dst in zip(source, target):
        if not compat.own_variables(src):
            continue  # a composite layer: its sublayers come in their own turn
        values = _float_weights(src, vocab)
        for var in compat.own_variables(dst):
            var.assign(values[var.name].reshape(var.shape))
    return plain
