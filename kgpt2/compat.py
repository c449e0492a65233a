"""The one place kgpt2 touches Keras / KerasHub internals, and the versions it was tested on.

KerasHub's GPT-2 has no public switch for three things kgpt2 does
(kgpt2.model.models): attention dropout apart from the residual dropout, the
backend's causal attention kernel, and a padded vocabulary whose pad logits
are masked; Keras' `Backbone.enable_lora` takes no alpha. Those need private
attributes (`_flatten_layers`, `_self_attention_layer`, `_dropout`,
`_dropout_layer`, `_compute_attention`) and a class swap on a built layer;
kgpt2.generation.fused_decode reads the weights of each decoder block's sublayers
(`_query_dense`, `_feedforward_output_dense`, ...: `decoder_block_parts`);
kgpt2.backend makes Keras' lazy TensorFlow module answer "imported?" instead of
importing it (`keras_sees_tensorflow_only_once_imported`).
They are fenced in here so that a Keras or KerasHub release that renames one
breaks in one file, and `check_versions` refuses untested releases with one
sentence instead of a wrong model (pyproject.toml carries the same bounds).

    >>> from kgpt2.compat import TESTED, check_versions
    >>> check_versions()  # keras 3.15.x and keras-hub 0.32.x: nothing to say
    >>> sorted(TESTED)
    ['keras', 'keras_hub']
    >>> check_versions({"keras": "3.16.0", "keras_hub": "0.32.0"})
    Traceback (most recent call last):
    kgpt2.errors.UserError: kgpt2 is tested with keras 3.15.x and keras-hub 0.32.x, but keras 3.16.0 is installed; install a tested version (pip install "keras>=3.15,<3.16"), or set KGPT2_UNTESTED_VERSIONS=1 to try anyway
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os

from kgpt2.errors import UserError

# Package -> the major.minor series kgpt2's tests run on (pyproject.toml bounds).
TESTED = {"keras": "3.15", "keras_hub": "0.32"}
_PIP_NAME = {"keras": "keras", "keras_hub": "keras-hub"}


def _installed() -> dict:
    import keras
    import keras_hub

    return {"keras": keras.__version__, "keras_hub": keras_hub.__version__}


def check_versions(installed: dict | None = None) -> None:
    """Refuse (one sentence) a keras / keras-hub outside the tested series.

    `KGPT2_UNTESTED_VERSIONS=1` lets a user try a newer release at their own risk.
    """
    if installed is None:
        if os.environ.get("KGPT2_UNTESTED_VERSIONS") == "1":
            return
        return _check_installed_once()
    tested = " and ".join(f"{_PIP_NAME[k]} {v}.x" for k, v in TESTED.items())
    for name, series in TESTED.items():
        version = installed[name]
        if version != series and not version.startswith(series + "."):
            major, minor = series.split(".")
            bound = f'"{_PIP_NAME[name]}>={series},<{major}.{int(minor) + 1}"'
            raise UserError(f"kgpt2 is tested with {tested}, but {_PIP_NAME[name]} {version} is installed; "
                            f"install a tested version (pip install {bound}), or set KGPT2_UNTESTED_VERSIONS=1 "
                            "to try anyway")


@functools.cache
def _check_installed_once() -> None:
    check_versions(_installed())


def keras_sees_tensorflow_only_once_imported() -> None:
    """Keras' question "is TensorFlow available?" answers whether it is imported, instead of importing it.

    Keras asks before it serialises any config (is this object a `tf.TensorShape`?) and when it seeds (it seeds
    TensorFlow too, for `tf.data` shuffles), and asking imports TensorFlow: ~3.8 s and ~590 MB that a run on JAX
    pays for nothing, since it builds no `tf.data` pipeline (kgpt2.backend.import_keras_quietly). An object can
    only be a TensorFlow type, and a `tf.data` shuffle only exist, once TensorFlow is imported, so the answer
    "imported" is the right one for both questions; whoever imports TensorFlow later finds it available. Keras'
    lazy module has no switch for this, hence the class swap on its one instance.

        >>> import sys
        >>> from keras.src.utils import module_utils
        >>> keras_sees_tensorflow_only_once_imported()
        >>> imported = sys.modules.get("tensorflow") is not None  # asked first: asking Keras must not import it
        >>> module_utils.tensorflow.available == imported
        True
    """
    import sys

    from keras.src.utils import module_utils

    class ImportedOnly(module_utils.LazyModule):
        @property
        def available(self):
            return sys.modules.get(self.name) is not None

    if type(module_utils.tensorflow) is module_utils.LazyModule:
        module_utils.tensorflow.__class__ = ImportedOnly


@contextlib.contextmanager
def train_step_compiler_options(options: dict):
    """Keras' JAX trainer compiles its train/test steps with these XLA options while inside.

    Keras has no switch for per-compile XLA options; its JAX trainer calls a module-level
    `jit`, so this swaps that for `jax.jit(..., compiler_options=options)` (per compile, unlike
    XLA_FLAGS, which are read once when the backend starts).
    """
    import keras

    if not options or keras.backend.backend() != "jax":
        yield
        return
    import jax
    from keras.src.backend.jax import trainer

    saved = trainer.jit
    trainer.jit = functools.partial(jax.jit, compiler_options=dict(options))
    try:
        yield
    finally:
        trainer.jit = saved


def compile_train_step_with(model, options: dict) -> None:
    """`model`'s train step compiles with these XLA options wherever it is fit (JAX; {} or another backend: nothing).

    The options go with the model, not with a scope around `fit`, so every path that trains it
    (kgpt2 train, kgpt2 align) compiles its step alike; its test and predict steps keep XLA's defaults.
    """
    import keras

    if not options or keras.backend.backend() != "jax":
        return
    make = model.make_train_function  # Keras' fit and train_on_batch call it before their first step

    def make_train_function(force=False):
        with train_step_compiler_options(options):
            return make(force)

    model.make_train_function = make_train_function


def sublayers(layer) -> list:
    """Every layer inside `layer`, nested ones too (Keras' private `_flatten_layers`)."""
    return list(layer._flatten_layers(include_self=False))


def retype_layer(layer, cls) -> None:
    """Make a built layer an instance of `cls`, a subclass of its class, keeping its weights.

    Rebuilding keras-hub's token embedding would mean rebuilding the backbone
    around it; a subclass that only changes `call` can take its place.
    """
    if not issubclass(cls, type(layer)):
        raise TypeError(f"{cls.__name__} does not extend {type(layer).__module__}.{type(layer).__name__}")
    layer.__class__ = cls


@contextlib.contextmanager
def unlocked_tracker(layer):
    """Add variables to a built layer (Keras' own `enable_lora` unlocks its `_tracker` so)."""
    layer._tracker.unlock()
    try:
        yield
    finally:
        layer._tracker.lock()


def own_variables(layer) -> list:
    """A layer's own variables, without its sublayers' (Keras' `_trainable_variables` + `_non_trainable_variables`)."""
    return layer._trainable_variables + layer._non_trainable_variables


def set_lora_bookkeeping(backbone, layer_indices: list, rank: int) -> None:
    """What keras-hub's `Backbone.save_lora_weights` / `load_lora_weights` read."""
    backbone._lora_enabled_layers, backbone._lora_rank = layer_indices, rank


def self_attention_layers(backbone) -> list:
    """The MultiHeadAttention layer of each keras-hub transformer decoder block."""
    return [block._self_attention_layer for block in backbone.transformer_layers]


def decoder_block_parts(block) -> dict:
    """The sublayers of a keras-hub TransformerDecoder block that kgpt2.generation.fused_decode reads weights from."""
    attention = block._self_attention_layer
    return {"norm1": block._self_attention_layer_norm, "query": attention._query_dense,
            "key": attention._key_dense, "value": attention._value_dense, "out": attention._output_dense,
            "norm2": block._feedforward_layer_norm, "fc": block._feedforward_intermediate_dense,
            "proj": block._feedforward_output_dense}


def decoder_block_call_parts(block) -> dict:
    """What kgpt2.kernels.fused_block's training call of a keras-hub TransformerDecoder uses besides the weights."""
    attention = block._self_attention_layer
    return {"attention": attention, "compute_attention": attention._compute_attention,
            "attention_dropout": block._self_attention_dropout, "feedforward_dropout": block._feedforward_dropout,
            "pre_norm": block.normalize_first, "cross_attention": block._cross_attention_layer is not None}


def self_attention_mask(block, x, padding_mask, attention_mask, use_causal_mask):
    """The mask a keras-hub TransformerDecoder gives its self-attention in training (no cache)."""
    return block._compute_self_attention_mask(
        decoder_sequence=x, decoder_padding_mask=padding_mask, decoder_attention_mask=attention_mask,
        use_causal_mask=use_causal_mask, self_attention_cache=None, self_attention_cache_update_index=None)


def attention_dropout(attention) -> float:
    """The dropout rate a Keras MultiHeadAttention applies to its attention probabilities."""
    return attention._dropout


def set_attention_dropout(attention, rate: float) -> None:
    """Set that rate on a built layer (Keras reads it at call time)."""
    import keras

    attention._dropout = rate
    layer = attention._dropout_layer
    layer.rate = rate
    if rate > 0 and getattr(layer, "seed_generator", None) is None:
        # Keras' Dropout makes its seed generator only when created with a rate > 0, and keras-hub
        # created it with model.dropout (0 by default): without one, training fails on its first step.
        with unlocked_tracker(layer):
            layer.seed_generator = keras.random.SeedGenerator()


# Spreads a uint32[2] Keras seed (seed, counter) over the rbg key's four words.
_RBG_SPREAD = 0x9E3779B9


def rbg_dropout(model) -> int:
    """Every Dropout layer in `model` draws its masks with XLA's RngBitGenerator (`train.dropout_rng = "rbg"`).

    Keras' JAX dropout makes its mask with threefry, which XLA computes as
    a chain of integer kernels; the rbg key's bits come from one
    RngBitGenerator op (Philox on a GPU): +2.4% steps/s at the Shakespeare
    shape on an H200 (docs/benchmarks.md). Same rate and 1/(1 - rate)
    scale, other random numbers. Each layer keeps drawing from its own
    SeedGenerator (checkpointed with the model), so a resumed run draws the
    masks an uninterrupted one would. Applied per layer, not by patching
    Keras: nothing changes for other models in the process. JAX only:
    elsewhere a warning, and training keeps the backend's own dropout.
    Returns the number of layers changed.
    """
    import keras

    if keras.backend.backend() != "jax":
        logging.getLogger("kgpt2").warning(
            "train.dropout_rng = \"rbg\" applies on the JAX backend only; training with %s's own dropout",
            keras.backend.backend())
        return 0
    layers = [layer for layer in sublayers(model) if isinstance(layer, keras.layers.Dropout)]
    for layer in layers:
        layer.call = _rbg_call(layer)
    return len(layers)


def _rbg_call(layer):
    import jax
    import jax.numpy as jnp
    import keras

    def call(inputs, training=False):
        if not training or layer.rate == 0:
            return inputs
        seed = jnp.asarray(layer.seed_generator.next(), "uint32")
        key = jax.random.wrap_key_data(jnp.concatenate([seed, seed ^ jnp.uint32(_RBG_SPREAD)]), impl="rbg")
        # Keras' own dropout (mask, scale, noise_shape) with this key: its JAX backend takes a key array as the seed.
        return keras.random.dropout(inputs, layer.rate, noise_shape=layer.noise_shape, seed=key)

    return call


def wrap_compute_attention(attention, wrap) -> None:
    """Replace a MultiHeadAttention's `_compute_attention` by `wrap(original)`.

    The wrapper is called as Keras calls `_compute_attention`: (query, key,
    value, attention_mask=None, training=None, return_attention_scores=False,
    use_causal_mask=False).
    """
    attention._compute_attention = wrap(attention._compute_attention)



def declare_steps(dataset, steps, passes: int = 1):
    """(dataset, steps) as KerasHub's `PipelineModel` (GPT2CausalLM's base) hands them to Keras.

    Keras' grain adapter does not know a dataset's length: it runs the
    iterator dry and warns "Your input ran out of data". KerasHub's tasks
    declare the length up front (and repeat the dataset for the passes); a
    Keras model of kgpt2's own that reads the same batches
    (kgpt2.model.packed_attention.PackedCausalLM) does the same through this.
    Subclassing `PipelineModel` is no way: its `__init__` resets its base
    class, which breaks every functional GPT2CausalLM already built.
    """
    from keras_hub.src.utils.pipeline_model import _declare_steps

    dataset, steps, _ = _declare_steps(dataset, steps, passes)
    return dataset, steps
