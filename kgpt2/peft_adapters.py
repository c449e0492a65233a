"""PEFT LoRA adapters for GPT-2 in and out of kgpt2's adapters, mapped exactly.

PEFT names GPT-2's linear layers `attn.c_attn` (query, key and value fused:
2,304 outputs for GPT-2 base), `attn.c_proj`, `mlp.c_fc` and `mlp.c_proj`;
kgpt2 (keras-hub) keeps query, key and value apart. PEFT's lora_A is
(rank, inputs) and lora_B (outputs, rank), kgpt2's A (inputs, rank) and B
(rank, outputs): the transposes. A fused c_attn adapter of rank r maps onto
query/key/value adapters of rank r that each get a copy of A and their third
of B's rows (exact: each output only sees its own rows of B). The other way,
kgpt2's separate query/key/value adapters become one c_attn adapter of rank
k*r (A stacked, B block-diagonal, alpha raised through PEFT's alpha_pattern
so the scale stays alpha/r), also exact. DoRA magnitudes split and join the
same way (PEFT's norm is per output, so per projection). Biases of adapted
layers, which kgpt2 trains, travel as PEFT's `bias = "lora_only"`.

    >>> from kgpt2.peft_adapters import PEFT_MODULES
    >>> PEFT_MODULES["attn.c_attn"]
    ('query', 'key', 'value')
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from kgpt2 import compat
from kgpt2.adapters import effective_kernel, kernel_layout, lora_scale, resolve_targets
from kgpt2.config import LoraConfig
from kgpt2.errors import UserError
from kgpt2.io import atomic_write_text

PEFT_MODULES = {
    "attn.c_attn": ("query", "key", "value"),
    "attn.c_proj": ("attention_output",),
    "mlp.c_fc": ("feedforward_intermediate_dense",),
    "mlp.c_proj": ("feedforward_output_dense",),
}
PREFIX = "base_model.model.transformer.h"
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
# PEFT options that change what an adapter computes and that kgpt2 has no form for.
UNSUPPORTED = ("modules_to_save", "layers_to_transform", "layers_pattern", "lora_bias", "use_qalora",
               "alora_invocation_tokens", "trainable_token_indices", "target_parameters", "use_bdlora")


def _linear_layers(block) -> dict:
    return {layer.name: layer for layer in compat.sublayers(block)
            if layer.name in sum(PEFT_MODULES.values(), ())}


def _scale_for(config: dict, module: str, rank: int) -> float:
    alpha = float(config.get("alpha_pattern", {}).get(module.split(".")[-1], config["lora_alpha"]))
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def adapter_tensors(backbone, lora: LoraConfig) -> tuple[dict, dict]:
    """PEFT state dict (numpy) and the rank/alpha patterns for `backbone`'s adapters."""
    targets, scale = resolve_targets(lora.targets), lora_scale(lora)
    tensors, ranks = {}, {}
    for i, block in enumerate(backbone.transformer_layers):
        layers = _linear_layers(block)
        for module, names in PEFT_MODULES.items():
            present = [n for n in names if n in targets]
            if not present:
                continue
            k, key = len(present), f"{PREFIX}.{i}.{module}"
            outs = [int(np.prod(kernel_layout(layers[n])[1])) for n in names]
            a = np.concatenate([np.asarray(layers[n].lora_kernel_a).T for n in present], axis=0)
            b = np.zeros((sum(outs), k * lora.rank), "float32")
            row = 0
            for n, size in zip(names, outs):
                if n in present:
                    j = present.index(n)
                    b[row:row + size, j * lora.rank:(j + 1) * lora.rank] = np.asarray(layers[n].lora_kernel_b).T
                row += size
            tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = a, b
            tensors[f"{key}.base_layer.bias"] = np.concatenate([np.asarray(layers[n].bias).ravel() for n in names])
            if lora.use_dora:  # a projection without adapter: magnitude = its norm, so it is unchanged
                tensors[f"{key}.lora_magnitude_vector"] = np.concatenate([
                    np.asarray(layers[n].dora_magnitude) if n in present
                    else np.linalg.norm(effective_kernel(layers[n]).reshape(-1, size), axis=0)
                    for n, size in zip(names, outs)])
            ranks[module] = k
    rank_pattern = {m.split(".")[-1]: k * lora.rank for m, k in ranks.items() if k > 1}
    root = math.sqrt if lora.use_rslora else (lambda r: r)
    alpha_pattern = {m: scale * root(r) for m, r in rank_pattern.items()}
    return {k: np.ascontiguousarray(v, "float32") for k, v in tensors.items()}, {
        "target_modules": [m for m in PEFT_MODULES if m in ranks],
        "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern}


def write_peft_adapter(backbone, lora: LoraConfig, out: Path, base: str | None = None) -> Path:
    """Write adapter_config.json + adapter_model.safetensors for `backbone`'s adapters into `out`."""
    from safetensors.numpy import save_file


    tensors, patterns = adapter_tensors(backbone, lora)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    atomic_write_text(out / CONFIG_FILE, json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "fan_in_fan_out": True,
        "bias": "lora_only", "use_rslora": lora.use_rslora, "use_dora": lora.use_dora,
        "init_lora_weights": True, "inference_mode": True, **patterns}, indent=2))
    return out


def read_peft_adapter(path) -> tuple[dict, dict]:
    """(adapter_config, tensors) of a PEFT adapter directory, or one clear sentence why not."""
    from safetensors.numpy import load_file

    root = Path(path).expanduser()
    if not (root / CONFIG_FILE).is_file() or not (root / WEIGHTS_FILE).is_file():
        raise UserError(f"'{root}' is not a PEFT adapter directory ({CONFIG_FILE} + {WEIGHTS_FILE})")
    try:
        config = json.loads((root / CONFIG_FILE).read_text())
        tensors = load_file(str(root / WEIGHTS_FILE))
    except Exception as e:  # a damaged file: one sentence, not a trace
        raise UserError(f"could not read the PEFT adapter in '{root}': {str(e).splitlines()[0][:200]}") from None
    if config.get("peft_type") != "LORA":
        raise UserError(f"'{root}' is a PEFT {config.get('peft_type')} adapter; kgpt2 reads LoRA (and DoRA) only")
    used = [k for k in UNSUPPORTED if config.get(k) not in (None, False, [], {}, "")]
    used += [f"alpha_pattern key {k!r}" for k in config.get("alpha_pattern") or {} if k not in ("c_attn", "c_proj", "c_fc")]
    if used:
        raise UserError(f"the PEFT adapter in '{root}' uses {', '.join(used)}, which kgpt2 adapters cannot express")
    return config, tensors


def needed_settings(config: dict, tensors: dict) -> LoraConfig:
    """The kgpt2 [lora] settings that reproduce a PEFT adapter exactly."""
    modules = sorted({k.split(".lora_A")[0] for k in tensors if ".lora_A." in k})
    if not modules or any(not k.startswith(PREFIX) for k in modules):
        raise UserError("the PEFT adapter has no lora_A weights on GPT-2 blocks (transformer.h.N...)")
    kinds = {m.split(".", 4)[-1].split(".", 1)[1] for m in modules}
    unknown = kinds - set(PEFT_MODULES)
    if unknown:
        raise UserError(f"the PEFT adapter targets {', '.join(sorted(unknown))}, which kgpt2 cannot map onto GPT-2")
    ranks = {tensors[f"{m}.lora_A.weight"].shape[0] for m in modules}
    scales = {_scale_for(config, m, tensors[f"{m}.lora_A.weight"].shape[0]) for m in modules}
    if len(ranks) > 1 or len(scales) > 1:
        raise UserError("the PEFT adapter uses different ranks or alphas per module; kgpt2 uses one rank and alpha")
    rank = ranks.pop()
    alpha = scales.pop() * (math.sqrt(rank) if config.get("use_rslora") else rank)
    targets = [t for m in PEFT_MODULES if m in kinds for t in PEFT_MODULES[m]]
    return LoraConfig(rank=rank, alpha=alpha, targets=targets, use_rslora=bool(config.get("use_rslora")),
                      use_dora=bool(config.get("use_dora")))


def load_peft_adapter(backbone, path, lora: LoraConfig) -> None:
    """Set `backbone`'s adapters (enabled with `lora`) from the PEFT adapter in `path`."""
    config, tensors = read_peft_adapter(path)
    need = needed_settings(config, tensors)
    mismatched = {f"lora.{k}": getattr(need, k) for k in ("rank", "use_rslora", "use_dora", "targets")
                  if (sorted(getattr(need, k)) if k == "targets" else getattr(need, k))
                  != (sorted(resolve_targets(lora.targets)) if k == "targets" else getattr(lora, k))}
    if abs(need.alpha - lora.alpha) > 1e-6 * max(1.0, abs(need.alpha)):
        mismatched["lora.alpha"] = need.alpha
    if mismatched:
        settings = " ".join(f"{k}={json.dumps(v)}" for k, v in mismatched.items())
        raise UserError(f"the PEFT adapter in '{path}' needs {settings}; set these to start from it")
    for i, block in enumerate(backbone.transformer_layers):
        layers = _linear_layers(block)
        for module, names in PEFT_MODULES.items():
            key = f"{PREFIX}.{i}.{module}"
            if f"{key}.lora_A.weight" not in tensors:
                continue
            a, b = tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"]
            row = 0
            for n in names:
                layer = layers[n]
                size = int(np.prod(layer.lora_out_shape))
                if a.shape[1] != layer.lora_kernel_a.shape[0] or b.shape[0] != size * len(names):
                    raise UserError(f"the PEFT adapter's {module} weights do not fit this model's shape")
                layer.lora_kernel_a.assign(a.T)
                layer.lora_kernel_b.assign(b[row:row + size].T)
                if f"{key}.lora_magnitude_vector" in tensors:
                    layer.dora_magnitude.assign(tensors[f"{key}.lora_magnitude_vector"][row:row + size])
                if f"{key}.base_layer.bias" in tensors and layer.bias is not None:
                    layer.bias.assign(tensors[f"{key}.base_layer.bias"][row:row + size].reshape(layer.bias.shape))
                row += size
