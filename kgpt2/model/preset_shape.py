"""A preset's shape, read without building it, and the model.* shape keys that apply only to "scratch".

keras-hub builds a preset (a name, a local folder, a hub handle) as it was
saved, whatever `model.num_layers`, `model.hidden_dim` ... say: those keys
shape a model from scratch only. `with_preset_shape` refuses one the user set
(in a TOML file or key=value, even to the default) to another value than the
preset's, in one sentence, and puts the preset's shape in the config, so a
run's config.json records the shape it trained:

    >>> from kgpt2.config import load_config
    >>> with_preset_shape(load_config(None, ["model.preset=gpt2_medium_en"])).model.num_layers
    24
    >>> with_preset_shape(load_config(None, ["model.preset=gpt2_medium_en", "model.num_layers=6"]))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    kgpt2.errors.UserError: model.num_layers = 6 applies only to model.preset = "scratch"; preset 'gpt2_medium_en' ...
    >>> with_preset_shape(load_config(None, ["model.preset=gpt2_medium_en", "model.num_layers=12"]))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    kgpt2.errors.UserError: model.num_layers = 12 applies only to model.preset = "scratch"; preset 'gpt2_medium_en' ...
    >>> with_preset_shape(load_config(None, ["model.preset=gpt2_medium_en", "model.num_layers=24"])).model.hidden_dim
    1024
"""

from __future__ import annotations

import dataclasses

from kgpt2.config import MODEL_SHAPE_KEYS, Config, ModelConfig
from kgpt2.errors import UserError
from kgpt2.model.models import preset_config

# keras-hub's GPT-2 presets as (layers, heads, width), known without a download: each has 1,024 positions,
# GPT-2's 50,257 tokens and an MLP 4x as wide.
NAMED_SHAPES = {"gpt2_base_en": (12, 12, 768), "gpt2_medium_en": (24, 16, 1024), "gpt2_large_en": (36, 20, 1280),
                "gpt2_extra_large_en": (48, 25, 1600)}
HF_SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "n_inner", "n_positions", "vocab_size")  # MODEL_SHAPE_KEYS' names


def preset_shape(cfg: ModelConfig) -> dict | None:
    """The shape of `cfg`'s preset (not "scratch") as MODEL_SHAPE_KEYS, read without building it (None = unknown)."""
    if cfg.preset in NAMED_SHAPES:
        layers, heads, width = NAMED_SHAPES[cfg.preset]
        return dict(zip(MODEL_SHAPE_KEYS, (layers, heads, width, 4 * width, 1024, 50257)))
    config = preset_config(cfg.preset) or {}
    if "model_type" in config:  # Hugging Face's names; n_inner unset (None) = 4 x n_embd
        values = [config.get(k) for k in HF_SHAPE_KEYS]
        values[3] = values[3] or (4 * values[2] if isinstance(values[2], int) else None)
    else:
        inner = config.get("config")
        values = [inner.get(k) if isinstance(inner, dict) else None for k in MODEL_SHAPE_KEYS]
    return dict(zip(MODEL_SHAPE_KEYS, values)) if all(isinstance(v, int) for v in values) else None


def with_preset_shape(cfg: Config) -> Config:
    """`cfg` with model.*'s shape keys those of its preset, so config.json records the shape trained.

    keras-hub builds a preset as it was saved: a shape key the user set to another value than the preset's would
    be ignored, so it is refused, naming the preset's value.
    """
    if cfg.model.preset == "scratch" or (shape := preset_shape(cfg.model)) is None:
        return cfg
    wrong = [k for k in _set_by_user(cfg) if getattr(cfg.model, k) != shape[k]]
    wrong = [k for k in wrong if not (k == "vocabulary_size" and cfg.model.vocabulary_size == 0)]  # 0 = the tokenizer's
    if wrong:
        words = {"num_layers": "layers", "num_heads": "heads", "vocabulary_size": "tokens"}
        asked = " and ".join(f"model.{k} = {getattr(cfg.model, k)}" for k in wrong)
        has = " and ".join(f"{shape[k]:,} {words[k]}" if k in words else f"{k} {shape[k]:,}" for k in wrong)
        them = "them" if len(wrong) > 1 else "it"
        raise UserError(f"{asked} appl{'y' if len(wrong) > 1 else 'ies'} only to model.preset = \"scratch\"; preset "
                        f"'{cfg.model.preset}' has {has}: leave {them} out (the model is the preset's), or set "
                        "model.preset = \"scratch\" for a new model of that shape")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **shape))


def _set_by_user(cfg: Config) -> list[str]:
    """The shape keys the user gave (a TOML file, key=value; a run's config.json records them all, so its own are
    not), or for a Config built in Python (typed_keys unknown) those not at their defaults."""
    if cfg.typed_keys is not None:
        return [k for k in MODEL_SHAPE_KEYS if f"model.{k}" in cfg.typed_keys]
    default = ModelConfig()
    return [k for k in MODEL_SHAPE_KEYS if getattr(cfg.model, k) != getattr(default, k)]
