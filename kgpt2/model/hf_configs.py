"""Hugging Face GPT-2 configs: what keras-hub's converter cannot carry; kaggle:// and hf:// handles' configs.

keras-hub converts a transformers GPT-2 (a local directory or an hf:// handle)
on load but assumes `n_inner = 4 * n_embd` and the stock block; these checks
pass `n_inner` on and refuse the rest in one sentence, so a loaded model
computes what transformers computes (kgpt2.model.models.build_backbone calls them).

    >>> from kgpt2.model.hf_configs import hf_config_overrides
    >>> hf_config_overrides({"model_type": "gpt2", "n_inner": 96}, "hf://org/gpt2-narrow")
    {'intermediate_dim': 96}
    >>> hf_config_overrides({"class_name": "GPT2Backbone", "config": {}}, "a KerasHub preset")
    {}
"""

from __future__ import annotations

import json
import os
import socket
import urllib.parse
from pathlib import Path

from kgpt2.errors import UserError

_PROXY_OR_OFFLINE = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE")


def unreachable_hub_host() -> str | None:
    """The Hugging Face Hub's host name when it does not resolve (no network), else None.

    huggingface_hub and `datasets` retry for ~25 s before they say there is no network; kgpt2 asks the resolver
    first, where nothing can come from the Hub's cache anyway. A proxy (which resolves names itself) or
    HF_HUB_OFFLINE leaves the question to them (None).
    """
    if any(os.environ.get(v) for v in _PROXY_OR_OFFLINE):
        return None
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return host
    return None


def fetch_hub_config(preset: str) -> dict:
    """A kaggle:// or hf:// handle's config.json (else {}), downloaded (or read from the cache) by the hub's own
    client. kgpt2 reads it before keras-hub loads the preset: for the model's context length, and because keras-hub's
    own check turns an hf:// download's failure, no network included, into "has no config.json", while this keeps
    the cause for kgpt2's sentence."""
    if preset.startswith("hf://"):
        import huggingface_hub  # keras-hub's (and gradio's) dependencies, needed only for hub handles

        repo = preset.removeprefix("hf://")
        host = None if isinstance(huggingface_hub.try_to_load_from_cache(repo, "config.json"), str) else \
            unreachable_hub_host()
        if host:  # not downloaded before, and no network: say so now, not after ~25 s of retries
            raise ConnectionError(f"{host} cannot be reached")
        path = huggingface_hub.hf_hub_download(repo_id=repo, filename="config.json")
    elif preset.startswith("kaggle://"):
        import kagglehub

        path = kagglehub.model_download(preset.removeprefix("kaggle://"), "config.json")
    else:
        return {}
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}  # not JSON: keras-hub reports what is wrong


def hf_gpt2_overrides(root: Path) -> dict:
    """Check a Hugging Face GPT-2 directory for what keras-hub's converter cannot carry.

    keras-hub's converter (keras_hub/src/utils/transformers/convert_gpt2.py)
    assumes `n_inner = 4 * n_embd` and the stock GPT-2 block, and silently
    ignores config fields that change the maths; kgpt2 passes `n_inner` on and
    refuses the rest, so a loaded model computes what transformers computes.
    Returns GPT2Backbone keyword overrides ({} for a KerasHub preset directory).
    """
    path = root / "config.json"
    try:
        config = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}  # not an HF config: keras-hub reports what is wrong
    overrides = hf_config_overrides(config, root)
    if "model_type" in config and not ((root / "model.safetensors").is_file()
                                       or (root / "model.safetensors.index.json").is_file()):
        raise UserError(f"'{root}' has no model.safetensors; re-save it with transformers' "
                        "save_pretrained(dir, safe_serialization=True)")
    return overrides


def hf_config_overrides(config: dict, where) -> dict:
    """GPT2Backbone overrides for a Hugging Face GPT-2 `config` (from `where`); {} for a KerasHub preset's."""
    if not isinstance(config, dict) or "model_type" not in config:
        return {}  # a KerasHub preset (its config.json has class_name/module)
    if config["model_type"] != "gpt2":
        raise UserError(f"'{where}' holds a Hugging Face '{config['model_type']}' model; kgpt2 loads GPT-2 only")
    unsupported = []
    if config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        unsupported.append(f"activation_function={config['activation_function']!r}")
    if abs(float(config.get("layer_norm_epsilon", 1e-5)) - 1e-5) > 1e-12:
        unsupported.append(f"layer_norm_epsilon={config['layer_norm_epsilon']}")
    if config.get("scale_attn_by_inverse_layer_idx", False) or not config.get("scale_attn_weights", True):
        unsupported.append("non-standard attention scaling")
    if not config.get("tie_word_embeddings", True):
        unsupported.append("tie_word_embeddings=false")
    if unsupported:
        raise UserError(f"'{where}' is a GPT-2 variant KerasHub's GPT2Backbone cannot express ({', '.join(unsupported)})")
    return {"intermediate_dim": int(config["n_inner"])} if config.get("n_inner") else {}
