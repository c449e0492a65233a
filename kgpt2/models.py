"""Model factory: a KerasHub GPT2CausalLM from a preset, a directory or a shape.

`model.preset` may be
- a KerasHub preset name (`gpt2_base_en`, `gpt2_medium_en`, `gpt2_large_en`,
  `gpt2_extra_large_en`; downloaded from Kaggle, so it needs the network once),
- a local preset directory (`save_to_preset` output, e.g. the quickstart's),
- a local Hugging Face GPT-2 directory (config.json + safetensors + vocab/merges;
  keras-hub converts it on load),
- `"scratch"`: a fresh GPT-2 of the shape in the config.

The task is built with `preprocessor=None`: kgpt2 tokenises with its exact
GPT-2 tokenizer (kgpt2.tokenizer) and feeds token ids.

    >>> from kgpt2.config import ModelConfig
    >>> from kgpt2.models import build_backbone
    >>> cfg = ModelConfig(preset="scratch", num_layers=2, num_heads=2, hidden_dim=32,
    ...                   intermediate_dim=64, max_sequence_length=64, vocabulary_size=300)
    >>> build_backbone(cfg).count_params() > 0
    True
"""

from __future__ import annotations

from pathlib import Path

import keras
import keras_hub

from kgpt2.config import Config, LoraConfig, ModelConfig
from kgpt2.errors import UserError
from kgpt2.tokenizer import Tokenizer

GPT2_PRESETS = ("gpt2_base_en", "gpt2_medium_en", "gpt2_large_en", "gpt2_extra_large_en")
OFFLINE_HINT = (
    "to work offline, use a local preset directory (save_to_preset output), "
    "a local Hugging Face GPT-2 directory, or model.preset = \"scratch\""
)
LORA_TARGETS = ("query", "key", "value", "attention_output")


def _is_local(preset: str) -> bool:
    return Path(preset).expanduser().is_dir()


def _check_preset(preset: str) -> None:
    if preset == "scratch" or _is_local(preset):
        return
    if "/" in preset or preset.startswith("."):
        raise UserError(f"model preset directory '{preset}' does not exist; {OFFLINE_HINT}")
    known = set(keras_hub.models.GPT2Backbone.presets)
    if preset not in known and not preset.startswith(("kaggle://", "hf://")):
        raise UserError(
            f"unknown GPT-2 preset '{preset}' (known: {', '.join(GPT2_PRESETS)}); {OFFLINE_HINT}"
        )


def build_backbone(cfg: ModelConfig, load_weights: bool = True) -> keras_hub.models.GPT2Backbone:
    """The GPT2Backbone for `cfg`, with kgpt2's dropout setting."""
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
        return keras_hub.models.GPT2Backbone.from_preset(
            preset, load_weights=load_weights, dropout=cfg.dropout
        )
    except UserError:
        raise
    except Exception as e:  # network, auth, missing files: one clear sentence
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"could not load model preset '{cfg.preset}' ({reason}); {OFFLINE_HINT}") from None


def load_tokenizer(cfg: ModelConfig) -> Tokenizer:
    """The run's exact GPT-2 tokenizer: `model.tokenizer` if set, else the preset's."""
    if cfg.tokenizer:
        return Tokenizer.from_dir(cfg.tokenizer)
    if cfg.preset == "scratch":
        raise UserError("a from-scratch model needs model.tokenizer (a directory with vocabulary.json + merges.txt)")
    _check_preset(cfg.preset)
    if _is_local(cfg.preset):
        root = Path(cfg.preset).expanduser()
        for d in (root / "assets" / "tokenizer", root):  # KerasHub preset, HF dir
            try:
                return Tokenizer.from_dir(d)
            except UserError:
                continue
        raise UserError(f"preset directory '{root}' holds no GPT-2 tokenizer files")
    try:
        kh = keras_hub.models.GPT2Tokenizer.from_preset(cfg.preset)
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"could not load the tokenizer of preset '{cfg.preset}' ({reason}); {OFFLINE_HINT}") from None
    return Tokenizer(kh.vocabulary, kh.merges)


def enable_lora(backbone, lora: LoraConfig) -> None:
    """Keras LoRA with alpha on the attention projections named in `lora.targets`.

    `Backbone.enable_lora` takes no alpha, so this does what it does (freeze
    every layer, then LoRA the targets) calling each layer's own
    `enable_lora(rank, lora_alpha=...)`.
    """
    unknown = set(lora.targets) - set(LORA_TARGETS)
    if unknown or not lora.targets:
        raise UserError(f"lora.targets must be some of {', '.join(LORA_TARGETS)}; got {lora.targets}")
    if lora.rank < 1:
        raise UserError(f"lora.rank must be at least 1, got {lora.rank}")
    backbone.trainable = True
    for layer in backbone._flatten_layers(include_self=False):
        layer.trainable = False
    for layer in backbone._flatten_layers(include_self=False):
        if layer.name in lora.targets and hasattr(layer, "enable_lora") and layer.weights:
            layer.trainable = True
            layer.enable_lora(lora.rank, lora_alpha=lora.alpha)
    # Let keras-hub's own save_lora_weights/load_lora_weights work too.
    backbone._lora_rank = lora.rank


def build_causal_lm(cfg: Config, load_weights: bool = True) -> keras_hub.models.GPT2CausalLM:
    """The task model for `cfg`: backbone (+ LoRA when enabled), no preprocessor."""
    backbone = build_backbone(cfg.model, load_weights=load_weights)
    if cfg.lora.enabled:
        enable_lora(backbone, cfg.lora)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def save_preset(backbone, tokenizer: Tokenizer, directory) -> Path:
    """Save a backbone and its tokenizer as a KerasHub preset directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    backbone.save_to_preset(str(directory))
    kh_tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary=tokenizer.vocabulary, merges=[" ".join(m) for m in tokenizer.merges]
    )
    kh_tokenizer.save_to_preset(str(directory))
    return directory


def count_params(model) -> dict:
    trainable = sum(int(keras.ops.size(v)) for v in model.trainable_weights)
    total = sum(int(keras.ops.size(v)) for v in model.weights)
    return {"trainable": trainable, "total": total}
