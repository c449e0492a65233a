"""Model factory: a KerasHub GPT2CausalLM from a preset, a directory or a shape.

`model.preset` may be
- a KerasHub preset name (`gpt2_base_en`, `gpt2_medium_en`, `gpt2_large_en`,
  `gpt2_extra_large_en`; downloaded from Kaggle, so it needs the network once),
- a local preset directory (`save_to_preset` output, e.g. the quickstart's),
- a Kaggle Models or Hugging Face Hub handle (`kaggle://...`, `hf://org/name`),
  downloaded by keras-hub,
- a local Hugging Face GPT-2 directory (config.json + safetensors + vocab/merges;
  keras-hub converts it on load, kgpt2.model.hf_configs checks what it cannot carry),
- `"scratch"`: a fresh GPT-2 of the shape in the config.

The task is built with `preprocessor=None`: kgpt2 tokenises with its exact
GPT-2 tokenizer (kgpt2.model.tokenizer) and feeds token ids.

    >>> from kgpt2.config import ModelConfig
    >>> from kgpt2.model.models import build_backbone
    >>> cfg = ModelConfig(preset="scratch", num_layers=2, num_heads=2, hidden_dim=32,
    ...                   intermediate_dim=64, max_sequence_length=64, vocabulary_size=300)
    >>> build_backbone(cfg).count_params() > 0
    True
"""

from __future__ import annotations

import contextvars
import json
import logging
import shlex
from pathlib import Path

import keras
import keras_hub
import numpy as np

from kgpt2 import compat
from kgpt2.backend import tensorflow_hidden
from kgpt2.config import Config, ModelConfig
from kgpt2.errors import UserError, load_failure
from kgpt2.kernels.cudnn_attention import use_cudnn_dropout_attention, wants_cudnn_dropout
from kgpt2.model.adapters import enable_lora
from kgpt2.model.hf_configs import fetch_hub_config, hf_config_overrides, hf_gpt2_overrides
from kgpt2.model.peft_adapters import load_peft_adapter
from kgpt2.model.quantize import quantize_backbone
from kgpt2.model.tokenizer import Tokenizer as BPETokenizer
from kgpt2.model.tokenizer_protocol import Tokenizer
from kgpt2.training.distribution import pin_attention_sharding

GPT2_PRESETS = ("gpt2_base_en", "gpt2_medium_en", "gpt2_large_en", "gpt2_extra_large_en")
HUB_SCHEMES = ("kaggle://", "hf://")  # keras-hub downloads these handles (Kaggle Models, the Hugging Face Hub)

OFFLINE_HINT = (
    "to work offline, use a local preset directory (save_to_preset output), "
    "a local Hugging Face GPT-2 directory, or model.preset = \"scratch\""
)


def download_cache(preset: str) -> str:
    """Where a downloaded preset is kept (what an offline sentence says it was not found in)."""
    return "the Hugging Face cache" if preset.startswith("hf://") else "the KerasHub cache"


def _is_local(preset: str) -> bool:
    return Path(preset).expanduser().is_dir()


def _check_preset(preset: str, hint: str = OFFLINE_HINT) -> None:
    if preset == "scratch" or _is_local(preset) or preset.startswith(HUB_SCHEMES):
        return
    if Path(preset).expanduser().exists() and preset not in keras_hub.models.GPT2Backbone.presets:  # a file
        raise UserError(f"model preset directory '{preset}' is a file, not a folder; {hint}")
    if "/" in preset or preset.startswith("."):
        raise UserError(f"model preset directory '{preset}' does not exist; {hint}")
    if preset not in keras_hub.models.GPT2Backbone.presets:
        raise UserError(
            f"unknown GPT-2 preset '{preset}' (known: {', '.join(GPT2_PRESETS)}, or a kaggle:// or hf:// handle); "
            f"{hint}"
        )


def preset_config(preset: str) -> dict | None:
    """A local preset's or a kaggle:// or hf:// handle's config.json (a handle's downloaded, as loading it would);
    None when there is none to read (loading the model reports what is wrong with it)."""
    if preset.startswith(HUB_SCHEMES):
        try:
            config = fetch_hub_config(preset)
        except Exception as e:  # network, auth, a malformed handle: one clear sentence
            raise load_failure(f"model preset '{preset}'", e, OFFLINE_HINT, download_cache(preset)) from None
    else:
        try:
            config = json.loads((Path(preset).expanduser() / "config.json").read_text())
        except (OSError, ValueError):
            return None
    return config if isinstance(config, dict) else None


def context_length(cfg: ModelConfig) -> int | None:
    """The longest sequence `cfg`'s model attends to, read without building it (None = unknown).

    Scratch: `model.max_sequence_length`; a local directory or a kaggle:// or
    hf:// handle: its config.json (KerasHub `max_sequence_length`, Hugging Face
    `n_positions`; a handle's is downloaded, as loading it would); the named
    GPT-2 presets: 1024, as every one of them was trained.
    """
    if cfg.preset == "scratch":
        return cfg.max_sequence_length
    if cfg.preset in GPT2_PRESETS:
        return 1024
    config = preset_config(cfg.preset) or {}
    n = config.get("config", {}).get("max_sequence_length") if "model_type" not in config else config.get("n_positions")
    return int(n) if isinstance(n, int) else None


def check_sequence_length(cfg: Config) -> None:
    """Refuse a `data.sequence_length` beyond the model's context before any work starts."""
    limit = context_length(cfg.model)
    if limit is not None and cfg.data.sequence_length > limit:
        raise UserError(f"data.sequence_length is {cfg.data.sequence_length}, but model '{cfg.model.preset}' "
                        f"attends to at most {limit} tokens; set data.sequence_length <= {limit}")


def build_backbone(cfg: ModelConfig, load_weights: bool = True) -> keras_hub.models.GPT2Backbone:
    """The GPT2Backbone for `cfg`, with kgpt2's dropout setting."""
    compat.check_versions()  # the internals kgpt2.compat touches are those of the tested releases
    _check_preset(cfg.preset)
    if cfg.preset == "scratch":
        return keras_hub.models.GPT2Backbone(
            vocabulary_size=cfg.vocabulary_size,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            hidden_dim=cfg.hidden_dim,
            intermediate_dim=cfg.intermediate_dim,
            dropout=cfg.dropout,
            max_sequence_length=cfg.max_sequence_length,
        )
    preset = str(Path(cfg.preset).expanduser()) if _is_local(cfg.preset) else cfg.preset
    try:
        overrides = hf_gpt2_overrides(Path(preset)) if _is_local(cfg.preset) else \
            hf_config_overrides(fetch_hub_config(preset), preset)
        # No preset kgpt2 accepts needs TensorFlow, though keras-hub imports it to ask whether TF's file systems
        # serve the preset's URL scheme (all but Kaggle handles: local folders and hf:// too).
        with tensorflow_hidden():
            return keras_hub.models.GPT2Backbone.from_preset(
                preset, load_weights=load_weights, dropout=cfg.dropout, **overrides
            )
    except UserError:
        raise
    except Exception as e:  # network, auth, missing files: one clear sentence
        raise load_failure(f"model preset '{cfg.preset}'", e, OFFLINE_HINT, download_cache(cfg.preset)) from None


def load_tokenizer(cfg: ModelConfig, offline_hint: str = OFFLINE_HINT) -> Tokenizer:
    """The run's exact GPT-2 tokenizer: `model.tokenizer` if set, else the preset's.

    `offline_hint`: what a preset that cannot be downloaded is told to use instead (the options of the
    command asking: `kgpt2 prepare` has --tokenizer, not model.preset)."""
    if cfg.tokenizer:
        return BPETokenizer.from_dir(cfg.tokenizer)
    if cfg.preset == "scratch":
        raise UserError("a from-scratch model needs a tokenizer (model.tokenizer; kgpt2 prepare: --tokenizer): a "
                        "folder with vocabulary.json + merges.txt, vocab.json + merges.txt, OpenAI's encoder.json + "
                        "vocab.bpe, a Hugging Face tokenizer.json or a char_vocabulary.json, or a KerasHub preset or "
                        "kgpt2 run holding one (`kgpt2 tokenizer train --source TEXT --out DIR` makes one)")
    _check_preset(cfg.preset, offline_hint)
    if _is_local(cfg.preset):
        root = Path(cfg.preset).expanduser()
        return BPETokenizer.from_dir(root)  # a KerasHub preset (assets/tokenizer/) or an HF model folder
    try:
        fetch_hub_config(cfg.preset)
        with tensorflow_hidden():  # as in build_backbone
            kh = keras_hub.models.GPT2Tokenizer.from_preset(cfg.preset)
    except Exception as e:
        what = f"the tokenizer of preset '{cfg.preset}'"
        raise load_failure(what, e, offline_hint, download_cache(cfg.preset)) from None
    return BPETokenizer(kh.vocabulary, kh.merges)


def named_tokenizer(cfg: ModelConfig) -> str:
    """How a message names the tokenizer `load_tokenizer` reads: model.tokenizer, else the preset's."""
    return f"model.tokenizer '{cfg.tokenizer}'" if cfg.tokenizer else f"the tokenizer of model.preset '{cfg.preset}'"


def prepare_hint(cfg: ModelConfig, then: str = "data.shards=NEW_SHARDS") -> str:
    """How to make shards with `cfg`'s tokenizer (the one load_tokenizer reads): its folder, or its preset's;
    `then`: how the command asking takes them (kgpt2 evaluate: --shards)."""
    option = f"--tokenizer {shlex.quote(cfg.tokenizer)}" if cfg.tokenizer else f"--preset {shlex.quote(cfg.preset)}"
    return f"make shards with the model's: kgpt2 prepare {option} --source SOURCE --out NEW_SHARDS (then {then})"


class PaddedReversibleEmbedding(keras_hub.layers.ReversibleEmbedding):
    """A token embedding with extra, never-predicted rows at the end.

    GPT-2's 50,257-token vocabulary makes the output projection an awkward
    matrix shape for GPU matrix units; 50,304 (a multiple of 64) runs faster
    (docs/benchmarks.md). The pad rows start at zero, no input ever looks
    them up, and their logits are pushed to a large negative number, so
    softmax, loss, sampling and (through `save_unpadded_weights`) exported
    weights are those of the unpadded model. keras-hub has no such option, so
    kgpt2 adds this one mask on top of its layer.
    """

    real_vocabulary_size: int = 0

    def _mask(self, logits):
        ids = keras.ops.arange(keras.ops.shape(logits)[-1])
        # Finite (not -inf): Keras's cross-entropy multiplies one-hot targets
        # by log-probabilities, and 0 * -inf would be NaN. float16 caps at 65504.
        low = -6.0e4 if keras.backend.standardize_dtype(logits.dtype) == "float16" else -1.0e9
        return keras.ops.where(ids < self.real_vocabulary_size, logits, keras.ops.cast(low, logits.dtype))

    def call(self, inputs, reverse=False):
        out = super().call(inputs, reverse=reverse)
        return self._mask(out) if reverse else out

    def quantized_call(self, inputs, reverse=False):
        out = super().quantized_call(inputs, reverse=reverse)
        return self._mask(out) if reverse else out


def mask_padding(embedding, logits):
    """`logits` over `embedding`'s rows with a padded vocabulary's pad columns masked, as its reverse call does."""
    return embedding._mask(logits) if isinstance(embedding, PaddedReversibleEmbedding) else logits


def padded_size(vocabulary_size: int, multiple: int) -> int:
    """`vocabulary_size` rounded up to `multiple` (0 or 1 = unchanged)."""
    if multiple < 0:
        raise UserError(f"model.pad_vocabulary_to must be 0 (off) or a positive multiple, got {multiple}")
    if multiple <= 1:
        return vocabulary_size
    return -(-vocabulary_size // multiple) * multiple


def pad_vocabulary(backbone, multiple: int):
    """A copy of `backbone` whose vocabulary is padded to `multiple`, pad logits masked.

    Returns `backbone` itself when its vocabulary is already a multiple.
    """
    real = backbone.vocabulary_size
    size = padded_size(real, multiple)
    if size == real:
        return backbone
    config = dict(backbone.get_config(), vocabulary_size=size)
    padded = type(backbone).from_config(config)
    weights = []
    for w, target in zip(backbone.get_weights(), padded.weights):
        if w.shape != tuple(target.shape):  # the token embedding: zero pad rows
            w = np.concatenate([w, np.zeros((size - real,) + w.shape[1:], w.dtype)], axis=0)
        weights.append(w)
    padded.set_weights(weights)
    compat.retype_layer(padded.token_embedding, PaddedReversibleEmbedding)
    padded.token_embedding.real_vocabulary_size = real
    padded.real_vocabulary_size = real
    return padded


def real_vocabulary_size(backbone) -> int:
    return getattr(backbone, "real_vocabulary_size", backbone.vocabulary_size)


def save_unpadded_weights(backbone, path) -> None:
    """`backbone.save_weights(path)` with the token embedding cut back to the real vocabulary.

    The file then loads into a plain keras-hub GPT2Backbone of the original
    vocabulary size (LoRA is merged by Keras on save).
    """
    import h5py

    backbone.save_weights(str(path))
    real, size = real_vocabulary_size(backbone), backbone.vocabulary_size
    if real == size:
        return
    with h5py.File(str(path), "r+") as f:
        cut = []
        f.visititems(lambda name, obj: cut.append(name)
                     if isinstance(obj, h5py.Dataset) and obj.ndim == 2 and obj.shape[0] == size else None)
        for name in cut:
            data = f[name][:real]
            del f[name]
            f.create_dataset(name, data=data)
        # Keras files a layer's variables under its class name: give the
        # plain keras-hub layer's name back.
        groups = []
        f.visititems(lambda name, obj: groups.append(name)
                     if isinstance(obj, h5py.Group) and name.endswith("padded_reversible_embedding") else None)
        for name in groups:
            f.move(name, name[: -len("padded_reversible_embedding")] + "reversible_embedding")


def set_attention_dropout(backbone, rate: float) -> None:
    """Dropout on the attention probabilities only (-1 = leave it at `model.dropout`).

    keras-hub's GPT-2 uses one rate for the residual, MLP and attention
    dropout; Keras' MultiHeadAttention takes its fused `dot_product_attention`
    path only when its own dropout is 0. keras-hub has no separate setting, so
    this sets the attention layers' rate (read at call time) directly.
    """
    if rate < 0:
        return
    for attention in compat.self_attention_layers(backbone):
        compat.set_attention_dropout(attention, rate)


# Set while tracing a packed forward (kgpt2.model.packed_attention): its mask confines
# attention to each example and must reach the kernel.
KEEP_ATTENTION_MASK = contextvars.ContextVar("kgpt2_keep_attention_mask", default=False)


def use_causal_attention(backbone) -> None:
    """Route full-length self-attention through the backend's causal kernel.

    keras-hub's GPT-2 decoder passes a [batch, T, T] causal-and-padding mask
    to its attention layers, so cuDNN's fused attention runs unmasked over
    every query/key tile with the mask as a bias: in an H100 profile of a
    124M training step, 23% of the GPU time (docs/benchmarks.md, "Where the
    time goes"). Keras takes the native causal kernel, which skips the tiles
    above the diagonal, when `_compute_attention` gets `use_causal_mask=True`
    and no mask; keras-hub has no switch for it, so this wraps each layer's
    `_compute_attention` to make that call when queries are as long as keys
    (training, evaluation, a prefill). That drops the padding part of the
    mask, which is exact for every real token as long as padding is on the
    right, as everywhere in kgpt2 (a real token never looks right of itself);
    tests/test_performance_options.py checks logits and generation. Calls
    with a cache offset (one-token decode steps), attention scores or
    attention dropout keep keras-hub's mask.
    """
    for attention in compat.self_attention_layers(backbone):

        def causal_for(compute, _layer=attention):
            def causal(query, key, value, attention_mask=None, training=None, return_attention_scores=False,
                       use_causal_mask=False):
                t, s = query.shape[1], key.shape[1]
                if (attention_mask is not None and t is not None and t == s and not return_attention_scores
                        and compat.attention_dropout(_layer) == 0 and not KEEP_ATTENTION_MASK.get()):
                    attention_mask, use_causal_mask = None, True
                return compute(query, key, value, attention_mask=attention_mask, training=training,
                               return_attention_scores=return_attention_scores, use_causal_mask=use_causal_mask)
            return causal

        compat.wrap_compute_attention(attention, causal_for)


def use_remat(backbone) -> None:
    """Rematerialise each transformer block (`train.remat`): its activations are recomputed in the backward pass.

    Keras' `RematScope` marks layers when they are built (inside keras-hub's
    `GPT2Backbone`), and its "full" mode passes every call argument through
    `keras.remat` (jax.checkpoint on JAX) as a traced value, including the
    block's Python `training` flag, which keras-hub's decoder then branches
    on. So kgpt2 wraps each built block's `call` in `keras.remat` itself,
    keyword flags kept static. Outputs are unchanged; training keeps one
    block's activations at a time instead of all of them. JAX only.
    """
    if keras.backend.backend() != "jax":  # tf.recompute_grad takes no keyword tensors in graph mode
        logging.getLogger("kgpt2").warning("train.remat applies on the JAX backend only; training without it")
        return
    for layer in backbone.transformer_layers:
        layer.call = remat_call(layer.call)
        layer.kgpt2_remat = True


def remat_call(call):
    """`call` through `keras.remat`, its tensor arguments traced and its keyword flags static."""
    def rematerialised(*args, **kwargs):
        names = [k for k, v in kwargs.items() if keras.ops.is_tensor(v)]
        flags = {k: v for k, v in kwargs.items() if k not in names}

        def block(*values):  # tensors positional, flags closed over (static)
            return call(*values[:len(args)], **dict(zip(names, values[len(args):])), **flags)

        return keras.remat(block)(*args, *(kwargs[k] for k in names))

    return rematerialised


def build_causal_lm(cfg: Config, load_weights: bool = True) -> keras_hub.models.GPT2CausalLM:
    """The task model for `cfg`: backbone (+ LoRA when enabled), no preprocessor.

    The vocabulary is padded to `model.pad_vocabulary_to` (see
    `PaddedReversibleEmbedding`); outputs are unchanged.
    """
    backbone = build_backbone(cfg.model, load_weights=load_weights)
    backbone = pad_vocabulary(backbone, cfg.model.pad_vocabulary_to)
    set_attention_dropout(backbone, cfg.model.attention_dropout)
    if cfg.model.causal_attention:
        use_causal_attention(backbone)
    if wants_cudnn_dropout(cfg.train.attention_dropout_kernel):
        use_cudnn_dropout_attention(backbone, seed=0, keep_mask=KEEP_ATTENTION_MASK)
    pin_attention_sharding(backbone)  # under train.mesh only; outermost, so every attention path sees it
    if cfg.train.dropout_rng == "rbg":
        compat.rbg_dropout(backbone)
    if cfg.train.remat:
        use_remat(backbone)
    if cfg.model.quantize:  # frozen int8/int4 base under float LoRA (kgpt2.model.quantize)
        quantize_backbone(backbone, cfg.model.quantize)
    if cfg.lora.enabled:
        enable_lora(backbone, cfg.lora)
        if cfg.lora.init_from:
            load_peft_adapter(backbone, cfg.lora.init_from, cfg.lora)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def save_preset(backbone, tokenizer: Tokenizer, directory) -> Path:
    """Save a backbone and its tokenizer as a KerasHub preset directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    backbone.save_to_preset(str(directory))
    if tokenizer.kind == "char":
        # KerasHub has no character-level GPT-2 tokenizer: the vocabulary goes
        # where its tokenizer assets would, and Tokenizer.from_dir finds it there.
        tokenizer.save(directory / "assets" / "tokenizer")
        return directory
    kh_tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary=tokenizer.vocabulary, merges=[" ".join(m) for m in tokenizer.merges]
    )
    kh_tokenizer.save_to_preset(str(directory))
    return directory


def count_params(model) -> dict:
    trainable = sum(int(keras.ops.size(v)) for v in model.trainable_weights)
    total = sum(int(keras.ops.size(v)) for v in model.weights)
    return {"trainable": trainable, "total": total}
