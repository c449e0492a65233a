"""Run configuration: plain dataclasses, read from TOML, overridable as `key=value`.

A run config names the model, the prepared shards, the stage plan and the
optimiser. Every field has a default that works, so a config file only says
what differs. Sections map to the dataclasses below; overrides use dotted
keys (`train.batch_size=4`, `lora.rank=16`, `run=my-run`).

    >>> from kgpt2.config import load_config
    >>> cfg = load_config(None, ["run=demo", "train.batch_size=4"])
    >>> cfg.train.batch_size, cfg.run_dir.name
    (4, 'demo')
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kgpt2.errors import UserError
from kgpt2.io import atomic_write_text


@dataclass
class ModelConfig:
    # A KerasHub preset name (gpt2_base_en ...), a local preset directory, a
    # local Hugging Face GPT-2 directory, or "scratch" for the shape below.
    preset: str = "gpt2_base_en"
    # From-scratch shape (used when preset == "scratch").
    num_layers: int = 12
    num_heads: int = 12
    hidden_dim: int = 768
    intermediate_dim: int = 3072
    max_sequence_length: int = 1024
    vocabulary_size: int = 50257  # 0 = the tokenizer's size (docs/pretraining.md)
    # Directory with vocabulary.json + merges.txt (or a character vocabulary
    # from `kgpt2 tokenizer train --char`); empty = the preset's own.
    tokenizer: str = ""
    # Dropout for training. keras-hub's presets use 0.1, which also makes
    # Keras skip its fused attention kernel (docs/benchmarks.md); fine-tuning
    # GPT-2 does well without it, so kgpt2 defaults to 0.0.
    dropout: float = 0.0
    # Pad the vocabulary (50,257 for GPT-2) up to a multiple of this for
    # faster GPU matrix shapes; the pad logits are masked, so loss, sampling
    # and exported weights are unchanged (docs/performance.md). 0 = off.
    pad_vocabulary_to: int = 64
    # Dropout on the attention probabilities only; -1 = the same as `dropout`.
    # 0 lets Keras use its fused attention kernel while the residual and MLP
    # dropout stay at `dropout` (docs/pretraining.md).
    attention_dropout: float = -1.0
    # Full-length self-attention through the backend's causal kernel
    # (`is_causal`) instead of keras-hub's explicit causal+padding mask, which
    # makes cuDNN compute every query/key tile. Same outputs for real tokens:
    # kgpt2 pads on the right only (kgpt2.models.use_causal_attention).
    causal_attention: bool = True
    # Quantise the frozen base after loading ("QLoRA" the Keras way): "" (off),
    # "int8" or "int4"; LoRA adapters on top stay in float (kgpt2.quantize).
    quantize: str = ""


@dataclass
class DataConfig:
    shards: str = ""  # directory written by `kgpt2 prepare`
    sequence_length: int = 1024
    # Instruction shards carry a loss mask: "response" trains on the response
    # tokens (+ end-of-text) only, "all" on every token. Articles have no mask.
    loss_on: str = "response"
    # "packed": fixed windows over the token stream (articles); "example": one
    # example per window, padded, so examples never attend to each other
    # (kgpt2.instructions explains why packing cannot isolate them).
    windows: str = "packed"
    # Shift every window start by a seeded random offset each epoch, so
    # repeated epochs see different windows (nanoGPT samples random offsets;
    # it matters when a small corpus is seen for many epochs).
    shift_windows: bool = False


@dataclass
class LoraConfig:
    enabled: bool = True
    rank: int = 8
    alpha: float = 32.0
    # EinsumDense layers of each attention block: query, key, value and
    # attention_output.
    targets: list = field(default_factory=lambda: ["query", "value"])


@dataclass
class TrainConfig:
    # Article counts per stage (ints), fractions of the train split (floats
    # in (0, 1]), or "rest". The seed project's plan is the default.
    stages: list = field(default_factory=lambda: [10, 10000, 80000, "rest"])
    # What to do when the plan asks for more articles than the split holds:
    # "reject" (a clear error) or "scale" (shrink every stage in proportion).
    oversize: str = "reject"
    epochs: int = 1
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    min_learning_rate: float = 0.0
    warmup_steps: int = 100
    weight_decay: float = 0.01
    beta_2: float = 0.999
    clipnorm: float = 1.0
    # "auto": bf16 on GPUs that have it, fp16 (loss scaled) on older GPUs,
    # fp32 on CPU. Or a Keras policy name: float32, mixed_bfloat16, mixed_float16.
    precision: str = "auto"
    device: str = "auto"  # "auto", "cpu", "gpu", "gpu:0", ...
    # Data parallel (JAX): "1", a device count, or "all" of train.device's
    # kind; batch_size is then the global batch (kgpt2.distribution).
    devices: str = "1"
    checkpoint_every: int = 0  # steps between mid-stage checkpoints (0 = stage ends only)
    keep_last: int = 3  # mid-stage checkpoints kept (stage-end ones are always kept)
    eval_batches: int = 50  # validation batches after each stage (0 = none)
    # Stop after this many optimizer steps in all (0 = when the plan ends).
    # With epochs = 0, the epochs are as many as max_steps needs.
    max_steps: int = 0
    # Every `eval_every` steps (0 = never): loss on `eval_batches` batches of
    # the train and validation splits, logged to logs/evals.csv; with
    # `keep_best`, a checkpoint whenever validation loss improves (id "best").
    eval_every: int = 0
    keep_best: bool = False
    # Clip the norm of all gradients together (torch's clip_grad_norm_,
    # nanoGPT) instead of each variable's gradient on its own.
    global_clipnorm: bool = False
    # Steps per call of the compiled train function (Keras `steps_per_execution`):
    # callbacks, logging and the host/GPU sync they force happen once per K
    # steps. checkpoint_every and eval_every should be multiples of it.
    steps_per_execution: int = 1
    # JAX: the training loss over this many sequence positions at a time, so
    # the full float32 logits and their gradient never exist at once (0 = the
    # plain loss; kgpt2.metrics.chunked_token_losses). Same results.
    loss_chunk: int = 0
    # Recompute each transformer block's activations in the backward pass:
    # a bigger batch fits, each step costs more (docs/benchmarks.md).
    remat: bool = False
    # Variables whose name contains one of these get no weight decay
    # (nanoGPT: ["bias", "gamma", "beta"], i.e. biases and layer norms).
    no_decay: list = field(default_factory=list)
    # Resume from the newest checkpoint in the run dir when there is one.
    resume: bool = True


@dataclass
class AlignConfig:
    """`kgpt2 align`: DPO on preference pairs (kgpt2.align)."""

    # JSON/JSONL files of prompt (or instruction/input) + chosen + rejected,
    # or a demo run's votes.jsonl.
    data: list = field(default_factory=list)
    beta: float = 0.1
    heldout_fraction: float = 0.1  # pairs held out for reward accuracy / margins
    steps: int = 100  # optimizer steps (batches of train.batch_size pairs)
    # Start the policy (and the frozen reference) from this run's checkpoint,
    # e.g. an Alpaca SFT run; empty = the preset itself.
    init_run: str = ""
    init_checkpoint: str = "latest"
    # Template for records that give a raw `prompt` ("plain" or "instruction");
    # instruction/input records always use the Alpaca template.
    template: str = "plain"


@dataclass
class GenerateConfig:
    sampler: str = "top_p"  # greedy, top_k, top_p, beam, random
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    max_length: int = 100  # prompt + new tokens, as in the seed's demo
    max_new_tokens: int = 0  # 0 = up to max_length
    seed: int = 0
    template: str = "plain"  # plain or instruction


@dataclass
class Config:
    run: str = "run"
    checkpoints_root: str = "checkpoints"
    seed: int = 1337
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    align: AlignConfig = field(default_factory=AlignConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.checkpoints_root) / self.run

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def model_signature(self) -> dict:
        """The fields a checkpoint depends on: changing them breaks resume."""
        m, lora = self.model, self.lora
        sig = {
            "preset": m.preset,
            "sequence_length": self.data.sequence_length,
            "lora": lora.enabled,
        }
        if m.pad_vocabulary_to > 1:  # checkpoints hold the padded embedding
            sig["pad_vocabulary_to"] = m.pad_vocabulary_to
        if m.preset == "scratch":
            sig.update(
                num_layers=m.num_layers,
                num_heads=m.num_heads,
                hidden_dim=m.hidden_dim,
                vocabulary_size=m.vocabulary_size,
            )
        if lora.enabled:
            sig.update(lora_rank=lora.rank, lora_targets=sorted(lora.targets))
        if m.quantize:  # adapters are trained against the quantised base
            sig["quantize"] = m.quantize
        return sig

    def hash(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _build(cls, values: dict, where: str):
    """Make dataclass `cls` from a TOML table, refusing unknown keys."""
    if not isinstance(values, dict):
        raise UserError(f"'{where}' must be a table of settings, not {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise UserError(f"unknown config key '{name}' (known here: {known})")
        default = fields[key].default_factory() if fields[key].default is dataclasses.MISSING else fields[key].default
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value, name)
        else:
            value = _coerce(value, default, name)
        kwargs[key] = value
    return cls(**kwargs)


def _coerce(value, default, name):
    """Check a value against its default's type; ints may stand for floats."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # a count may stand for a string (train.devices = 2)
        ok = isinstance(value, str)
    if not ok:
        raise UserError(
            f"config key '{name}' should be {type(default).__name__}, got {value!r}"
        )
    return value


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    try:  # TOML syntax for the value (numbers, booleans, lists, quoted strings)
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string
    return key.strip().split("."), value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a TOML run config (or the defaults), then apply `key=value` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file '{path}' does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"config file '{path}' is not valid TOML: {e}") from None
    for text in overrides:
        keys, value = _parse_override(text)
        table = data
        for k in keys[:-1]:
            table = table.setdefault(k, {})
            if not isinstance(table, dict):
                raise UserError(f"override '{text}': '{k}' is not a section")
        table[keys[-1]] = value
    return _build(Config, data, "")


def config_from_dict(data: dict) -> Config:
    return _build(Config, data, "")


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as JSON (what the run actually used)."""
    atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
