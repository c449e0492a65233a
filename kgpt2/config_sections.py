"""The sections of a run config, one dataclass each, every value checked when it is made.

`kgpt2.config` joins them into a `Config` and reads them from TOML and
`key=value` overrides; here is what each section holds, its defaults and its
bounds (`at_least`, `Literal` choices, rules of one section in
`__post_init__`). A mistake is refused in one sentence naming the key:

    >>> from kgpt2.config_sections import LoraConfig, TrainConfig
    >>> LoraConfig(rank=16).targets, TrainConfig().precision
    (['query', 'value'], 'auto')
    >>> TrainConfig(batch_size=0)
    Traceback (most recent call last):
    kgpt2.errors.UserError: train.batch_size must be at least 1; got 0
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import typing
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from kgpt2.data.stage_plan import check_plan
from kgpt2.errors import UserError

# The linear layers of a keras-hub GPT-2 block (PEFT's names in GPT-2: c_attn
# holds query/key/value, attn.c_proj, mlp.c_fc, mlp.c_proj).
LORA_TARGETS = ("query", "key", "value", "attention_output",
                "feedforward_intermediate_dense", "feedforward_output_dense")
ALL_LINEAR = "all-linear"  # PEFT's shorthand: every linear layer but the output head
Precision = Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]
Template = Literal["plain", "instruction", "chat"]


def at_least(low, *, default, below=None):
    """A dataclass field whose value must be >= `low` (and < `below` when given)."""
    return field(default=default, metadata={"min": low, "below": below})


def show_value(value) -> str:
    """A value as a config file spells it: "text", true, 3."""
    return json.dumps(value) if isinstance(value, (str, bool)) else repr(value)


@functools.lru_cache(maxsize=None)
def section_type_hints(cls) -> dict:
    """A section's resolved annotations, once per class (resolving them costs ~0.3 ms, and generation
    checks its settings at every request)."""
    return typing.get_type_hints(cls)


def check_fields(section) -> None:
    """Check a section's values against its `Literal` annotations and `at_least` bounds (written once, below);
    the message names the key, the bad value and what is allowed."""
    hints = section_type_hints(type(section))
    for f in dataclasses.fields(section):
        key, value, hint = f"{section.SECTION}.{f.name}", getattr(section, f.name), hints[f.name]
        if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
            allowed = ", ".join(show_value(a) for a in typing.get_args(hint))
            raise UserError(f"{key} must be one of {allowed}; got {show_value(value)}")
        if isinstance(value, float) and not math.isfinite(value):  # NaN passes every `<` check below
            raise UserError(f"{key} must be a finite number; got {show_value(value)}")
        low, below = f.metadata.get("min"), f.metadata.get("below")
        if low is not None and value < low:
            raise UserError(f"{key} must be at least {low}; got {show_value(value)}")
        if below is not None and value >= below:
            raise UserError(f"{key} must be below {below}; got {show_value(value)}")


# The keys of a from-scratch model's shape. A preset has its own: `kgpt2 train` refuses one set to another value and
# records the preset's (kgpt2.model.preset_shape), so config.json holds the shape trained.
MODEL_SHAPE_KEYS = ("num_layers", "num_heads", "hidden_dim", "intermediate_dim", "max_sequence_length",
                    "vocabulary_size")


@dataclass
class ModelConfig:
    SECTION: ClassVar[str] = "model"
    # A KerasHub preset name (gpt2_base_en ...), a local preset directory, a
    # local Hugging Face GPT-2 directory, or "scratch" for the shape below.
    preset: str = "gpt2_base_en"
    # From-scratch shape (MODEL_SHAPE_KEYS; a preset's is its own).
    num_layers: int = at_least(1, default=12)
    num_heads: int = at_least(1, default=12)
    hidden_dim: int = at_least(1, default=768)
    intermediate_dim: int = at_least(1, default=3072)
    max_sequence_length: int = at_least(1, default=1024)
    vocabulary_size: int = at_least(0, default=0)  # 0 = the tokenizer's size (50,257 for GPT-2's; docs/pretraining.md)
    # Directory with vocabulary.json + merges.txt (or a character vocabulary
    # from `kgpt2 tokenizer train --char`); empty = the preset's own.
    tokenizer: str = ""
    # Dropout for training. keras-hub's presets use 0.1, which also makes
    # Keras skip its fused attention kernel (docs/benchmarks.md); fine-tuning
    # GPT-2 does well without it, so kgpt2 defaults to 0.0.
    dropout: float = at_least(0.0, default=0.0, below=1.0)
    # Pad the vocabulary (50,257 for GPT-2) up to a multiple of this for
    # faster GPU matrix shapes; the pad logits are masked, so loss, sampling
    # and exported weights are unchanged (docs/performance.md). 0 = off.
    pad_vocabulary_to: int = at_least(0, default=64)
    # Dropout on the attention probabilities only; -1 = the same as `dropout`.
    # 0 lets Keras use its fused attention kernel while the residual and MLP
    # dropout stay at `dropout` (docs/pretraining.md).
    attention_dropout: float = at_least(-1.0, default=-1.0, below=1.0)
    # Full-length self-attention through the backend's causal kernel
    # (`is_causal`) instead of keras-hub's explicit causal+padding mask, which
    # makes cuDNN compute every query/key tile. Same outputs for real tokens:
    # kgpt2 pads on the right only (kgpt2.model.models.use_causal_attention).
    causal_attention: bool = True
    # Quantise the frozen base after loading ("QLoRA" the Keras way): "" (off),
    # "int8" or "int4"; LoRA adapters on top stay in float (kgpt2.model.quantize).
    quantize: Literal["", "int8", "int4"] = ""

    def __post_init__(self):
        check_fields(self)
        if self.attention_dropout < 0 and self.attention_dropout != -1:
            raise UserError(f"model.attention_dropout must be -1 (the same as model.dropout) or in [0, 1); "
                            f"got {self.attention_dropout}")


@dataclass
class DataConfig:
    SECTION: ClassVar[str] = "data"
    shards: str = ""  # directory written by `kgpt2 prepare`
    sequence_length: int = at_least(1, default=1024)
    # Instruction shards carry a loss mask: "response" trains on the response
    # tokens (+ end-of-text) only, "all" on every token. Articles have no mask.
    loss_on: Literal["response", "all"] = "response"
    # How the shards become windows of sequence_length tokens. "packed": fixed
    # windows over the token stream (articles; examples there see each other);
    # "example": one example per window, padded; "packed_examples": several
    # examples per window, each attending only to itself, positions restarting
    # per example (kgpt2.data.packing, kgpt2.model.packed_attention); "auto":
    # "packed_examples" on shards with a loss mask (instruction, chat), else
    # "packed". A run saves the resolved choice in its config.json.
    windows: Literal["auto", "packed", "example", "packed_examples"] = "auto"
    # Shift every window start by a seeded random offset each epoch, so
    # repeated epochs see different windows (nanoGPT samples random offsets;
    # it matters when a small corpus is seen for many epochs).
    shift_windows: bool = False

    def __post_init__(self):
        check_fields(self)


@dataclass
class LoraConfig:
    SECTION: ClassVar[str] = "lora"
    enabled: bool = True
    rank: int = at_least(1, default=8)
    alpha: float = at_least(0.0, default=32.0)
    # Layers of each block: query, key, value, attention_output,
    # feedforward_intermediate_dense, feedforward_output_dense, or
    # "all-linear" (all of them, as PEFT's shorthand) (kgpt2.model.adapters).
    targets: list = field(default_factory=lambda: ["query", "value"])
    # Dropout on the adapter's input only, in training (PEFT's lora_dropout).
    dropout: float = at_least(0.0, default=0.0, below=1.0)
    # Scale alpha / sqrt(rank) instead of alpha / rank (rsLoRA).
    use_rslora: bool = False
    # DoRA: a trained magnitude per output times the normalised W + BA.
    use_dora: bool = False
    # A PEFT adapter directory (adapter_config.json + adapter_model.safetensors)
    # to start from; rank, alpha, targets and variant must match it.
    init_from: str = ""

    def __post_init__(self):
        check_fields(self)
        allowed_targets = (*LORA_TARGETS, ALL_LINEAR)
        if not self.targets or set(self.targets) - set(allowed_targets) or len(set(self.targets)) < len(self.targets):
            allowed = ", ".join(show_value(t) for t in allowed_targets)
            raise UserError(f"lora.targets must be a list of distinct names from {allowed}; got {self.targets!r}")


@dataclass
class TrainConfig:
    SECTION: ClassVar[str] = "train"
    # Article counts per stage (ints), fractions of the train split (floats
    # in (0, 1] or "8%"), or "rest". The seed project's plan is the default.
    stages: list = field(default_factory=lambda: [10, 10000, 80000, "rest"])
    # A plan the split cannot hold (or one leaving "rest" under 5%): "scale"
    # makes it a proportional plan of the same shape, "reject" refuses it
    # (kgpt2.data.stage_plan; `kgpt2 train --dry-run` shows the plan and why).
    oversize: Literal["reject", "scale"] = "scale"
    epochs: int = at_least(0, default=1)
    batch_size: int = at_least(1, default=8)
    gradient_accumulation_steps: int = at_least(1, default=1)
    learning_rate: float = at_least(0.0, default=5e-5)
    min_learning_rate: float = at_least(0.0, default=0.0)
    warmup_steps: int = at_least(0, default=100)
    # Steps of warmup + cosine decay (nanoGPT's lr_decay_iters); then the rate
    # stays at min_learning_rate. 0 = the run's total step count.
    decay_steps: int = at_least(0, default=0)
    weight_decay: float = at_least(0.0, default=0.01)
    beta_2: float = at_least(0.0, default=0.999, below=1.0)
    clipnorm: float = at_least(0.0, default=1.0)
    # "auto": bf16 on GPUs that have it, fp16 (loss scaled) on older GPUs,
    # fp32 on CPU. Or a Keras policy name: float32, mixed_bfloat16, mixed_float16.
    precision: Precision = "auto"
    device: str = "auto"  # "auto", "cpu", "gpu", "gpu:0", ...
    # Data parallel (JAX): "1", a device count, or "all" of train.device's
    # kind; batch_size is then the global batch (kgpt2.training.distribution).
    devices: str = "1"
    # Sharded weights and optimizer state (JAX, kgpt2.training.distribution): "" = off,
    # "data:4" = FSDP over 4 devices, "data:2,model:2" = FSDP x tensor parallel.
    mesh: str = ""
    checkpoint_every: int = at_least(0, default=0)  # steps between mid-stage checkpoints (0 = stage ends only)
    keep_last: int = at_least(0, default=3)  # mid-stage checkpoints kept, 0 = all (stage-end ones are always kept)
    eval_batches: int = at_least(0, default=50)  # validation batches after each stage (0 = none)
    # Stop after this many steps in all (0 = when the plan ends); a step is a batch, so with
    # gradient_accumulation_steps = K it is K batches to an optimizer update (docs/training.md).
    # With epochs = 0, the epochs are as many as max_steps needs.
    max_steps: int = at_least(0, default=0)
    # Every `eval_every` steps (0 = never): loss on `eval_batches` batches of
    # the train and validation splits, logged to logs/evals.csv; with
    # `keep_best`, a checkpoint whenever validation loss improves (id "best").
    eval_every: int = at_least(0, default=0)
    keep_best: bool = False
    # Clip the norm of all gradients together (torch's clip_grad_norm_,
    # nanoGPT) instead of each variable's gradient on its own.
    global_clipnorm: bool = False
    # Steps per call of the compiled train function (Keras `steps_per_execution`):
    # callbacks, logging and the host/GPU sync they force happen once per K
    # steps. checkpoint_every and eval_every should be multiples of it.
    steps_per_execution: int = at_least(1, default=1)
    # JAX: the training loss over this many sequence positions at a time, so
    # the full float32 logits and their gradient never exist at once (0 = the
    # plain loss; kgpt2.training.metrics.chunked_token_losses). Same results.
    loss_chunk: int = at_least(0, default=0)
    # JAX: the training loss from the backbone's hidden states in one piece:
    # bf16 logits, read once forward by a Pallas kernel on a GPU, their
    # gradient written in one pass (kgpt2.kernels.cross_entropy). Same results;
    # loss_chunk > 0 takes precedence. "auto": on for a JAX GPU of Ampere or
    # newer (XLA compiles Pallas' Triton kernels from compute capability 8.0:
    # not a T4) without a distribution (H200, 124M: +4.1% full, +5.8% LoRA, then
    # +1.6% / +2.2% from round 9's kernels; docs/benchmarks.md); true elsewhere
    # runs the same maths in jnp.
    fused_loss: Literal["auto", True, False] = "auto"
    # JAX: layer norms through kgpt2.kernels.layer_norm (a Pallas kernel forward, one
    # backward, on a GPU) instead of XLA's five kernels, and keras-hub's decoder
    # blocks through kgpt2.kernels.fused_block (residual adds inside the norms, q/k/v
    # gradients gathered in one kernel). Same results. "auto": as fused_loss, for
    # full training only (H200: +1.5% at 124M before a +2.3% backward, +2% more
    # from the fused blocks; the Shakespeare recipe 7.8-7.9 -> 5.4-6.5 ms a step; LoRA -1%).
    fused_layer_norm: Literal["auto", True, False] = "auto"
    # Recompute each transformer block's activations in the backward pass:
    # a bigger batch fits, each step costs more (docs/benchmarks.md).
    remat: bool = False
    # JAX on a GPU: XLA's Triton GEMM emitter ("on", XLA's default) or cuBLAS for every matmul ("off").
    # "auto": off for full training of a model >= 768 wide (+3.3% on an H200, 124M, batch 16 x 1,024), on with
    # LoRA (off: -0.9%) and for narrower models (Shakespeare's 384: off -4.2%); docs/benchmarks.md. No effect
    # elsewhere.
    triton_gemm: Literal["auto", "on", "off"] = "auto"
    # JAX: the random bits of every dropout mask from threefry (Keras' default) or "rbg", XLA's
    # RngBitGenerator (one op; at the Shakespeare shape on an H200 +2.4% once, 0.94x and 1.07x in another call).
    # Other random numbers, same rate; resumes exactly either way. Elsewhere a warning, no effect.
    dropout_rng: Literal["threefry", "rbg"] = "threefry"
    # JAX on a GPU: attention dropout inside cuDNN's fused causal kernel ("cudnn") instead of Keras' masked
    # softmax + dropout ("xla"): the Shakespeare recipe 7.19 ms an iteration instead of 8.93 on an H200
    # (docs/benchmarks.md); the train step's command buffers then leave cuDNN's calls out (XLA aborts
    # otherwise). Same rate; the masks come from cuDNN's own stream, so a resumed run draws other masks than an
    # uninterrupted one. "auto": "cudnn" where it can run (JAX on a GPU), "xla" elsewhere without a warning
    # (the shakespeare_char recipe's choice).
    attention_dropout_kernel: Literal["xla", "cudnn", "auto"] = "xla"
    # Variables whose name contains one of these get no weight decay
    # (nanoGPT: ["bias", "gamma", "beta"], i.e. biases and layer norms).
    no_decay: list = field(default_factory=list)
    # Resume from the newest checkpoint in the run dir when there is one.
    resume: bool = True
    # "RUN_DIR[:CHECKPOINT]": a new run starts from another run's weights
    # (adapter included; latest checkpoint by default) with a fresh optimizer.
    init_from: str = ""

    def __post_init__(self):
        check_fields(self)
        check_plan(self.stages)
        if not re.fullmatch(r"auto|cpu|gpu(:\d+)?", self.device.lower()):
            raise UserError(f"train.device must be one of \"auto\", \"cpu\", \"gpu\", \"gpu:N\"; got {show_value(self.device)}")
        if not re.fullmatch(r"all|[1-9]\d*", self.devices.lower()):
            raise UserError(f"train.devices must be a device count (1, 2, ...) or \"all\"; got {show_value(self.devices)}")
        if not re.fullmatch(r"(data:[1-9]\d*(,model:[1-9]\d*)?|model:[1-9]\d*)?", self.mesh.replace(" ", "").lower()):
            raise UserError(f"train.mesh must be \"\", \"data:N\" or \"data:N,model:M\"; got {show_value(self.mesh)}")
        if self.epochs == 0 and self.max_steps == 0:
            raise UserError("train.epochs = 0 means \"as many as train.max_steps needs\"; set train.max_steps too")
        if self.min_learning_rate > self.learning_rate:
            raise UserError(f"train.min_learning_rate ({self.min_learning_rate}) must not exceed "
                            f"train.learning_rate ({self.learning_rate})")


@dataclass
class AlignConfig:
    """`kgpt2 align`: preference alignment on pairs or KTO examples (kgpt2.align)."""

    SECTION: ClassVar[str] = "align"

    # JSON/JSONL files of prompt (or instruction/input) + chosen + rejected,
    # or a demo run's votes.jsonl.
    data: list = field(default_factory=list)
    # dpo (sigmoid), ipo, hinge, simpo and orpo (no reference model), kto
    # (unpaired desirable / undesirable examples); kgpt2.training.preference_losses.
    loss: Literal["dpo", "ipo", "hinge", "simpo", "orpo", "kto"] = "dpo"
    beta: float = 0.1  # > 0 (ORPO: the odds-ratio weight lambda)
    label_smoothing: float = at_least(0.0, default=0.0, below=0.5)  # dpo / simpo (cDPO)
    simpo_gamma: float = 0.5  # SimPO's target reward margin
    heldout_fraction: float = 0.1  # pairs held out for reward accuracy / margins, in (0, 1)
    steps: int = at_least(1, default=100)  # optimizer steps (batches of train.batch_size pairs)
    # Start the policy (and the frozen reference) from this run's checkpoint,
    # e.g. an Alpaca SFT run; empty = the preset itself. Its [model], [lora]
    # and data.sequence_length are this config's unless it sets them itself.
    init_run: str = ""
    init_checkpoint: str = "latest"
    # Template for records that give a raw `prompt` ("plain" or "instruction");
    # instruction/input records always use the Alpaca template.
    template: Template = "plain"

    def __post_init__(self):
        check_fields(self)
        if self.beta <= 0:
            raise UserError(f"align.beta must be above 0; got {self.beta}")
        if not 0 < self.heldout_fraction < 1:
            raise UserError(f"align.heldout_fraction must be between 0 and 1; got {self.heldout_fraction}")


@dataclass
class GenerateConfig:
    SECTION: ClassVar[str] = "generate"
    sampler: Literal["greedy", "top_k", "top_p", "beam", "random"] = "top_p"
    temperature: float = 0.8  # > 0
    top_k: int = at_least(1, default=50)
    top_p: float = 0.95  # in (0, 1]
    max_length: int = at_least(1, default=100)  # prompt + new tokens, as in the seed's demo
    max_new_tokens: int = at_least(0, default=0)  # 0 = up to max_length
    seed: int = 0
    template: Template = "plain"
    num_beams: int = at_least(1, default=5)  # for sampler = "beam"
    # The weights `kgpt2 generate` / `kgpt2 serve` decode with: "auto" = the training
    # policy on this device (float32 on CPU); "float32"; "bfloat16" (weights and
    # key/value cache; on a JAX CPU float32 arithmetic on weights rounded to bfloat16,
    # decoded from bfloat16 copies: ~1.6x float32's tokens/s); "int8" (Keras
    # `quantize("int8")` of every Dense/embedding, after the restore).
    weights: Literal["auto", "float32", "bfloat16", "int8"] = "auto"

    def __post_init__(self):
        check_fields(self)
        if self.temperature <= 0:
            raise UserError(f"generate.temperature must be above 0; got {self.temperature} (for the most likely "
                            "token every step, what temperature 0 means to OpenAI's API, use --sampler greedy, "
                            "or generate.sampler = \"greedy\")")
        if not 0 < self.top_p <= 1:
            raise UserError(f"generate.top_p must be in (0, 1]; got {self.top_p}")
