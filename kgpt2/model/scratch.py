"""From-scratch models: a fresh, seeded GPT-2 of any shape saved as a KerasHub preset.

`init_preset` (`kgpt2 pretrain init`) builds a randomly initialised
GPT2Backbone of the shape in `[model]` (layers, heads, width, context,
vocabulary, dropout) and saves it with its tokenizer as a KerasHub preset.

`kgpt2 train` with `model.preset = "scratch"` calls `resolve_scratch`: the
first time, it saves that preset as `<run>/preset` and records the run as
using it, so train stages, resume, evaluate (`base` = the exact initial
weights), generate and the demo all see an ordinary local preset.

    >>> from kgpt2.model.char_tokenizer import CharTokenizer
    >>> from kgpt2.config import ModelConfig
    >>> from kgpt2.model.scratch import scratch_shape
    >>> model = ModelConfig(preset="scratch", vocabulary_size=0, hidden_dim=64, num_heads=2)
    >>> shape = scratch_shape(model, CharTokenizer("abc"))
    >>> shape.preset, shape.vocabulary_size  # 0 = the tokenizer's: 3 characters + end-of-text
    ('scratch', 4)
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import keras

from kgpt2.config import Config, ModelConfig
from kgpt2.errors import UserError
from kgpt2.io import check_room, new_folder
from kgpt2.model.models import build_backbone, load_tokenizer, save_preset
from kgpt2.model.tokenizer_protocol import Tokenizer
from kgpt2.training.devices import dtype_policy

log = logging.getLogger("kgpt2")

PRESET_DIR = "preset"  # <run>/preset: the from-scratch base of a run
# Written into every preset `init_preset` makes (keras-hub ignores it): its weights are a random
# initialisation, which LoRA alone would leave random (`warn_lora_on_random_weights`).
SCRATCH_MARK = "kgpt2_scratch.json"


def scratch_shape(model: ModelConfig, tokenizer: Tokenizer) -> ModelConfig:
    """`model` with `vocabulary_size = 0` resolved to the tokenizer's size, checked."""
    size = model.vocabulary_size or tokenizer.vocab_size
    if size < tokenizer.vocab_size:
        raise UserError(f"model.vocabulary_size {size} is smaller than the tokenizer's {tokenizer.vocab_size} tokens")
    if model.hidden_dim % model.num_heads:
        raise UserError(f"model.hidden_dim {model.hidden_dim} must be a multiple of model.num_heads {model.num_heads}")
    if size > 2 * tokenizer.vocab_size:  # e.g. the 50,257 default with a small trained tokenizer: a bigger, slower model
        log.warning("model.vocabulary_size %d is larger than the tokenizer's %d tokens: %d embedding rows will never be "
                    "used (model.vocabulary_size = 0 takes the tokenizer's size)", size, tokenizer.vocab_size,
                    size - tokenizer.vocab_size)
    return replace(model, preset="scratch", vocabulary_size=size)


def init_preset(cfg: Config, out_dir, seed: int | None = None) -> Path:
    """Save a seeded, randomly initialised GPT-2 of `cfg.model`'s shape as a KerasHub preset.

    `out_dir` must be new (or empty): a run's checkpoints were trained from its
    preset, so replacing one would strand them. It appears whole or not at all.
    """
    # without model.tokenizer, load_tokenizer refuses in the one sentence naming every tokenizer form kgpt2 reads
    tokenizer = load_tokenizer(replace(cfg.model, preset="scratch"))
    shape = scratch_shape(cfg.model, tokenizer)
    if cfg.data.sequence_length > shape.max_sequence_length:
        raise UserError(f"data.sequence_length {cfg.data.sequence_length} exceeds model.max_sequence_length {shape.max_sequence_length}")
    # float32 weights on disk; keras-hub converts them to the training policy on load.
    with dtype_policy("float32"):
        keras.utils.set_random_seed(cfg.seed if seed is None else seed)
        backbone = build_backbone(shape)
        with new_folder(out_dir, "preset") as tmp:
            check_room(tmp, backbone.count_params() * 4, "the preset")  # float32: h5py may crash on a full disk
            save_preset(backbone, tokenizer, tmp)
            (tmp / SCRATCH_MARK).write_text(json.dumps(
                {"made_by": "kgpt2 pretrain init", "weights": "random initialisation",
                 "seed": cfg.seed if seed is None else seed}, indent=2))
    out = Path(out_dir)
    log.info("saved a %d-layer, %d-head, %d-wide GPT-2 (%s parameters, vocabulary %d, context %d) as preset %s",
             shape.num_layers, shape.num_heads, shape.hidden_dim, f"{backbone.count_params():,}",
             shape.vocabulary_size, shape.max_sequence_length, out)
    return out


def resolve_scratch(cfg: Config) -> Config:
    """For `model.preset = "scratch"`: the same config using `<run>/preset`, made once."""
    warn_lora_on_random_weights(cfg)
    if cfg.model.preset != "scratch":
        return cfg
    preset_dir = cfg.run_dir / PRESET_DIR
    if not (preset_dir / "config.json").is_file():
        init_preset(cfg, preset_dir)
    else:
        _check_same_shape(cfg.model, preset_dir)
    return replace(cfg, model=replace(cfg.model, preset=str(preset_dir)))


def warn_lora_on_random_weights(cfg: Config) -> None:
    """A warning for LoRA over a from-scratch model (`scratch`, or a preset `kgpt2 pretrain init` made), e.g. the
    chat or alpaca recipe pointed at a new model: only the adapters would train, over weights left random."""
    preset = cfg.model.preset
    random = preset == "scratch" or (Path(preset).expanduser() / SCRATCH_MARK).is_file()
    if random and cfg.lora.enabled and not cfg.train.init_from:
        log.warning("LoRA on a model from scratch trains only its adapters, the random weights under "
                    "them stay random; set lora.enabled = false to train the whole model")


def _check_same_shape(model: ModelConfig, preset_dir: Path) -> None:
    """A run's saved preset must still be the shape its config asks for."""
    saved = json.loads((preset_dir / "config.json").read_text())["config"]
    asked = {"num_layers": model.num_layers, "num_heads": model.num_heads, "hidden_dim": model.hidden_dim,
             "intermediate_dim": model.intermediate_dim, "max_sequence_length": model.max_sequence_length}
    if model.vocabulary_size:
        asked["vocabulary_size"] = model.vocabulary_size
    diffs = [f"{k} {saved.get(k)} -> {v}" for k, v in asked.items() if saved.get(k) != v]
    if diffs:
        raise UserError(f"run preset '{preset_dir}' has another shape than model.* asks for ({', '.join(diffs)}); use a new run name")
