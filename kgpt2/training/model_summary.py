"""What `kgpt2 train` says about the model it built, before the first step: its parameters, what trains, and
whether its training fits the device's memory (a warning, from kgpt2.model.memory's estimate).

The count is the model's own: that of its real vocabulary, the one `kgpt2 pretrain init`, KerasHub and
Hugging Face give for it. A vocabulary padded for speed (`model.pad_vocabulary_to`, kgpt2.model.models) adds
rows that stay zero and are never exported; they are named apart, not folded in, so one training does not
print two counts for one model.
"""

from __future__ import annotations

import logging
import math

from kgpt2.config import Config
from kgpt2.model import memory  # memory: read at call time, a test stands in for the device's memory
from kgpt2.model.models import count_params, real_vocabulary_size

log = logging.getLogger("kgpt2")


def padding_params(model) -> tuple[int, int]:
    """(all, trainable) parameters of the rows a padded vocabulary adds to `model`'s token embedding."""
    backbone = model.backbone
    size, extra = backbone.vocabulary_size, backbone.vocabulary_size - real_vocabulary_size(backbone)
    if extra <= 0:
        return 0, 0
    counts = [(extra * math.prod(v.shape[1:]), v.trainable)  # the embedding (and an int8 one's scales)
              for v in backbone.token_embedding.weights if len(v.shape) and v.shape[0] == size]
    return sum(n for n, _ in counts), sum(n for n, trainable in counts if trainable)


def model_line(cfg: Config, model) -> str:
    """"model: PRESET, N parameters, M trainable" (LoRA's rank and alpha; the vocabulary's padding apart)."""
    params, (pad, pad_trainable) = count_params(model), padding_params(model)
    line = (f"model: {cfg.model.preset}, {params['total'] - pad:,} parameters, "
            f"{params['trainable'] - pad_trainable:,} trainable")
    if cfg.lora.enabled:
        line += f" (LoRA rank {cfg.lora.rank}, alpha {cfg.lora.alpha})"
    if pad:
        b = model.backbone
        line += (f"; the vocabulary padded {real_vocabulary_size(b):,} -> {b.vocabulary_size:,} for speed adds "
                 f"{pad:,} that stay zero (model.pad_vocabulary_to; not exported)")
    return line


def warn_if_too_big(cfg: Config, model, on_gpu: bool) -> None:
    """A warning when training `model` (all it holds, padding included) will not fit the device's (or, on a CPU,
    the machine's free) memory, with a batch size that would."""
    b = model.backbone
    mode = ("int8-lora" if cfg.model.quantize == "int8" else "lora") if cfg.lora.enabled else "full"
    available = memory.device_memory_bytes() if on_gpu else memory.host_available_bytes()
    warning = memory.check_fits(count_params(model)["total"], mode, cfg.train.batch_size, cfg.data.sequence_length,
                                b.num_layers, b.hidden_dim, b.vocabulary_size, available,
                                accumulation=cfg.train.gradient_accumulation_steps, on_gpu=on_gpu)
    if warning:
        log.warning("%s", warning)
