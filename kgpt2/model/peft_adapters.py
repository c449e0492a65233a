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
so the scale stays alpha/r), also exact; read back, such a c_attn adapter is
recognised (the weights file names its blocks' projections; without that, B's
zero blocks do) and becomes the k rank-r adapters again, so kgpt2's own export
restores the run's [lora] settings. DoRA magnitudes split and join the
same way (PEFT's norm is per output, so per projection). Biases of adapted
layers, which kgpt2 trains, travel as PEFT's `bias = "lora_only"`.

    >>> from kgpt2.model.peft_adapters import PEFT_MODULES
    >>> PEFT_MODULES["attn.c_attn"]
    ('query', 'key', 'value')
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from kgpt2 import compat
from kgpt2.config import LoraConfig
from kgpt2.errors import UserError
from kgpt2.io import atomic_write_text
from kgpt2.model.adapters import effective_kernel, kernel_layout, lora_scale, resolve_targets

PEFT_MODULES = {
    "attn.c_attn": ("query", "key", "value"),
    "attn.c_proj": ("attention_output",),
    "mlp.c_fc": ("feedforward_intermediate_dense",),
    "mlp.c_proj": ("feedforward_output_dense",),
}
PREFIX = "base_model.model.transformer.h"
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
# safetensors metadata kgpt2 writes: the projections owning c_attn's rank blocks, in order ("query,value").
SPLIT_KEY = "kgpt2_c_attn"
LORA_ORDER = sum(PEFT_MODULES.values(), ())
# PEFT options that change what an adapter computes and that kgpt2 has no form for.
UNSUPPORTED = ("modules_to_save", "layers_to_transform", "layers_pattern", "lora_bias", "use_qalora",
               "alora_invocation_tokens", "trainable_token_indices", "target_parameters", "use_bdlora")


def _linear_layers(block) -> dict:
    return {layer.name: layer for layer in compat.sublayers(block) if layer.name in LORA_ORDER}


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
    metadata = {"format": "pt"}
    owners = [n for n in PEFT_MODULES["attn.c_attn"] if n in resolve_targets(lora.targets)]
    if owners:  # an untrained B is all zeros: the block layout cannot be read off it (see _split_owners)
        metadata[SPLIT_KEY] = ",".join(owners)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS_FILE), metadata=metadata)
    atomic_write_text(out / CONFIG_FILE, json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "fan_in_fan_out": True,
        "bias": "lora_only", "use_rslora": lora.use_rslora, "use_dora": lora.use_dora,
        "init_lora_weights": True, "inference_mode": True, **patterns}, indent=2))
    return out


def read_peft_adapter(path) -> tuple[dict, dict]:
    """(adapter_config, tensors) of a PEFT adapter directory, or one clear sentence why not.

    The config also holds kgpt2's c_attn block layout (SPLIT_KEY) when the weights file was written by kgpt2.
    """
    from safetensors import safe_open
    from safetensors.numpy import load_file

    root = Path(path).expanduser()
    if not (root / CONFIG_FILE).is_file() or not (root / WEIGHTS_FILE).is_file():
        raise UserError(f"'{root}' is not a PEFT adapter directory ({CONFIG_FILE} + {WEIGHTS_FILE})")
    try:
        config = json.loads((root / CONFIG_FILE).read_text())
        tensors = load_file(str(root / WEIGHTS_FILE))
        with safe_open(str(root / WEIGHTS_FILE), framework="numpy") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # a damaged file: one sentence, not a trace
        raise UserError(f"could not read the PEFT adapter in '{root}': {str(e).splitlines()[0][:200]}") from None
    if config.get("peft_type") != "LORA":
        raise UserError(f"'{root}' is a PEFT {config.get('peft_type')} adapter; kgpt2 reads LoRA (and DoRA) only")
    used = [k for k in UNSUPPORTED if config.get(k) not in (None, False, [], {}, "")]
    used += [f"alpha_pattern key {k!r}" for k in config.get("alpha_pattern") or {} if k not in ("c_attn", "c_proj", "c_fc")]
    if used:
        raise UserError(f"the PEFT adapter in '{root}' uses {', '.join(used)}, which kgpt2 adapters cannot express")
    config.pop(SPLIT_KEY, None)  # only the weights file kgpt2 wrote may say so
    if metadata.get(SPLIT_KEY):
        config[SPLIT_KEY] = metadata[SPLIT_KEY]
    return config, tensors


def _split_owners(config: dict, a: np.ndarray, b: np.ndarray) -> tuple | None:
    """The projections owning c_attn's rank blocks when it is kgpt2's q/k/v split, else None (one fused adapter).

    kgpt2 writes k separate rank-r adapters as one c_attn adapter of rank k*r: A stacked, B block-diagonal
    (projection j's rows non-zero only in columns j*r..(j+1)*r). Read back as k rank-r adapters it is the run's
    own configuration; read as one fused adapter it is the same function with rank k*r on all three. kgpt2's
    weights file names the owners (SPLIT_KEY); without it the owners are the projections whose rows of B are
    non-zero (an adapter PEFT trained further fills B and reads as fused). DoRA needs the file's word: a
    projection without adapter must have its magnitude equal to its kernel's norm, which B cannot show.
    """
    names, r, rank = PEFT_MODULES["attn.c_attn"], int(config.get("r") or 0), a.shape[0]
    if r < 1 or rank % r or not 1 <= rank // r <= len(names) or b.shape[0] % len(names):
        return None
    k, size = rank // r, b.shape[0] // len(names)
    nonzero = [[bool(np.any(b[p * size:(p + 1) * size, j * r:(j + 1) * r])) for j in range(k)]
               for p in range(len(names))]
    if config.get(SPLIT_KEY):
        owners = tuple(config[SPLIT_KEY].split(","))
        if len(owners) != k or len(set(owners)) != k or not set(owners) <= set(names):
            return None
    elif config.get("use_dora"):
        return None
    else:
        owners = tuple(n for n, row in zip(names, nonzero) if any(row))
    if len(owners) != k:
        return None
    if any(hit and (n not in owners or owners.index(n) != j)
           for n, row in zip(names, nonzero) for j, hit in enumerate(row)):
        return None  # B has weights outside the block diagonal: a fused adapter
    return owners


def module_adapters(config: dict, tensors: dict, key: str, module: str) -> list[tuple]:
    """(projection, its rows of the PEFT module's outputs, A (rank, inputs), B (outputs, rank)) of each kgpt2
    adapter that computes PEFT module `key` (of kind `module`, e.g. "attn.c_attn")."""
    a, b = tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"]
    names = PEFT_MODULES[module]
    size = b.shape[0] // len(names)
    rows = {n: slice(p * size, (p + 1) * size) for p, n in enumerate(names)}
    owners = _split_owners(config, a, b) if module == "attn.c_attn" else None
    if owners is None:  # one adapter on the fused layer: each projection gets A and its rows of B (exact)
        return [(n, rows[n], a, b[rows[n]]) for n in names]
    r = a.shape[0] // len(owners)
    return [(n, rows[n], a[j * r:(j + 1) * r], b[rows[n], j * r:(j + 1) * r]) for j, n in enumerate(owners)]


def _peft_modules(tensors: dict) -> dict:
    """PEFT module key -> its kind (a PEFT_MODULES key), or one sentence why kgpt2 cannot map them."""
    modules = sorted({k.split(".lora_A")[0] for k in tensors if ".lora_A." in k})
    if not modules or any(not k.startswith(PREFIX) for k in modules):
        raise UserError("the PEFT adapter has no lora_A weights on GPT-2 blocks (transformer.h.N...)")
    kinds = {m: m.split(".", 4)[-1].split(".", 1)[1] for m in modules}
    unknown = set(kinds.values()) - set(PEFT_MODULES)
    if unknown:
        raise UserError(f"the PEFT adapter targets {', '.join(sorted(unknown))}, which kgpt2 cannot map onto GPT-2")
    return kinds


def needed_settings(config: dict, tensors: dict, where: str = "") -> LoraConfig:
    """The kgpt2 [lora] settings that reproduce a PEFT adapter exactly (`where`: its directory, for errors)."""
    root = math.sqrt if config.get("use_rslora") else (lambda r: r)
    seen, targets = {}, set()  # PEFT module kind -> {(rank, scale)} of the kgpt2 adapters it becomes
    for key, kind in _peft_modules(tensors).items():
        scale = _scale_for(config, key, tensors[f"{key}.lora_A.weight"].shape[0])
        for name, _, a, _ in module_adapters(config, tensors, key, kind):
            targets.add(name)
            seen.setdefault(kind, set()).add((a.shape[0], scale))
    pairs = set().union(*seen.values())
    ranks, scales = {r for r, _ in pairs}, [s for _, s in pairs]
    if len(ranks) > 1 or max(scales) - min(scales) > 1e-6 * max(1.0, abs(max(scales))):
        shown = "; ".join(f"{kind} rank {r} alpha {s * root(r):g}" for kind in PEFT_MODULES if kind in seen
                          for r, s in sorted(seen[kind]))
        raise UserError(f"the PEFT adapter {f'in {where!r} ' if where else ''}gives its modules different ranks or "
                        f"alphas ({shown}), but kgpt2 gives every adapted layer one rank and alpha: re-make it with "
                        "one r and lora_alpha for all its target_modules, or merge it into its base "
                        "(merge_and_unload().save_pretrained(DIR)) and train on model.preset=DIR")
    rank = ranks.pop()
    return LoraConfig(rank=rank, alpha=scales[0] * root(rank), targets=[t for t in LORA_ORDER if t in targets],
                      use_rslora=bool(config.get("use_rslora")), use_dora=bool(config.get("use_dora")))


def _check_settings(need: LoraConfig, lora: LoraConfig, path) -> None:
    """One sentence naming the [lora] settings to change when `lora` is not the adapter's `need`."""
    mismatched = {f"lora.{k}": getattr(need, k) for k in ("rank", "use_rslora", "use_dora", "targets")
                  if (sorted(getattr(need, k)) if k == "targets" else getattr(need, k))
                  != (sorted(resolve_targets(lora.targets)) if k == "targets" else getattr(lora, k))}
    if abs(need.alpha - lora.alpha) > 1e-6 * max(1.0, abs(need.alpha)):
        mismatched["lora.alpha"] = need.alpha
    if mismatched:
        settings = " ".join(f"{k}={json.dumps(v)}" for k, v in mismatched.items())
        raise UserError(f"the PEFT adapter in '{path}' needs {settings}; set these to start from it")


def load_peft_adapter(backbone, path, lora: LoraConfig) -> None:
    """Set `backbone`'s adapters (enabled with `lora`) from the PEFT adapter in `path`."""
    config, tensors = read_peft_adapter(path)
    _check_settings(needed_settings(config, tensors, str(path)), lora, path)
    for i, block in enumerate(backbone.transformer_layers):
        layers = _linear_layers(block)
        for module, names in PEFT_MODULES.items():
            key = f"{PREFIX}.{i}.{module}"
            if f"{key}.lora_A.weight" not in tensors:
                continue
            in_shape, out_shape = kernel_layout(layers[names[0]])
            a, b = tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"]
            if a.shape[1] != int(np.prod(in_shape)) or b.shape[0] != int(np.prod(out_shape)) * len(names):
                raise UserError(f"the PEFT adapter's {module} weights do not fit this model's shape")
            for name, rows, a_part, b_part in module_adapters(config, tensors, key, module):
                layer = layers[name]
                layer.lora_kernel_a.assign(a_part.T)
                layer.lora_kernel_b.assign(b_part.T)
                if f"{key}.lora_magnitude_vector" in tensors:
                    layer.dora_magnitude.assign(tensors[f"{key}.lora_magnitude_vector"][rows])
            size = int(np.prod(out_shape))
            for p, name in enumerate(names):  # PEFT's bias = "lora_only" trains the whole fused bias
                if f"{key}.base_layer.bias" in tensors and layers[name].bias is not None:
                    bias = tensors[f"{key}.base_layer.bias"][p * size:(p + 1) * size]
                    layers[name].bias.assign(bias.reshape(layers[name].bias.shape))
