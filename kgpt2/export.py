"""Export a run's fine-tuned model as a Hugging Face GPT-2 or a KerasHub preset.

    kgpt2 export --run checkpoints/pubmed --to hf exported/pubmed-hf
    kgpt2 export --run checkpoints/pubmed --checkpoint stage-2 --to preset exported/pubmed-preset

Both formats hold one plain GPT-2: LoRA folded into the kernels, the
vocabulary padding (model.pad_vocabulary_to) cut off, float32 weights, and
kgpt2's own tokenizer files. The `hf` directory (config.json,
model.safetensors, vocab.json, merges.txt, tokenizer_config.json) loads with
`transformers.GPT2LMHeadModel.from_pretrained` and `AutoTokenizer`; either
directory also works as kgpt2's `model.preset` to train further.

    >>> from kgpt2.export import export_run
    >>> # export_run("checkpoints/quickstart", "hf", "exported/quickstart-hf")
    >>> # import transformers
    >>> # transformers.GPT2LMHeadModel.from_pretrained("exported/quickstart-hf")
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import keras_hub

from kgpt2.devices import dtype_policy
from kgpt2.errors import UserError
from kgpt2.io import atomic_write_text
from kgpt2.models import build_causal_lm, load_tokenizer, real_vocabulary_size, save_preset, save_unpadded_weights
from kgpt2.run import load_run_config, restore
from kgpt2.tokenizer_protocol import Tokenizer

FORMATS = ("hf", "preset")
PROVENANCE_FILE = "kgpt2_export.json"


def merged_backbone(model) -> keras_hub.models.GPT2Backbone:
    """A plain GPT2Backbone holding `model`'s weights with LoRA merged in.

    Keras merges each LoRA pair into its kernel (kernel + alpha/rank * A @ B)
    when it saves weights, and `save_unpadded_weights` cuts the padded
    vocabulary back, so the file loads into a backbone of the run's own
    configuration without LoRA. Call under a float32 dtype policy: the merge
    happens in the layer's compute dtype.
    """
    config = dict(model.backbone.get_config(), vocabulary_size=real_vocabulary_size(model.backbone))
    plain = keras_hub.models.GPT2Backbone.from_config(config)
    with tempfile.TemporaryDirectory(prefix="kgpt2-merge-") as tmp:
        path = Path(tmp) / "merged.weights.h5"
        save_unpadded_weights(model.backbone, path)
        plain.load_weights(str(path))
    return plain


def write_hf(backbone, tokenizer: Tokenizer, out: Path) -> Path:
    """Write `backbone` + `tokenizer` as a Hugging Face GPT-2 directory."""
    if tokenizer.kind == "char":
        raise UserError("a character-level tokenizer has no Hugging Face GPT-2 form; export with --to preset")
    # keras-hub's exporter writes config.json + model.safetensors (embedding
    # tied, as in transformers' own GPT-2 checkpoints).
    backbone.export_to_transformers(str(out))
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    # The exporter hard-codes GPT-2's token ids and names no architecture;
    # AutoModelForCausalLM and generation need both right for this vocabulary.
    config.update(architectures=["GPT2LMHeadModel"], bos_token_id=tokenizer.eos_id,
                  eos_token_id=tokenizer.eos_id, torch_dtype="float32", tie_word_embeddings=True)
    atomic_write_text(config_path, json.dumps(config, indent=2))
    atomic_write_text(out / "generation_config.json",
                      json.dumps({"bos_token_id": tokenizer.eos_id, "eos_token_id": tokenizer.eos_id}, indent=2))
    # The BPE files under the names transformers' GPT2Tokenizer reads.
    eos = next(t for t, i in tokenizer.vocabulary.items() if i == tokenizer.eos_id)
    atomic_write_text(out / "vocab.json", json.dumps(tokenizer.vocabulary, ensure_ascii=False))
    merges = ["#version: 0.2"] + [" ".join(m) for m in tokenizer.merges]
    atomic_write_text(out / "merges.txt", "\n".join(merges) + "\n")
    atomic_write_text(out / "tokenizer_config.json", json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "model_type": "gpt2", "add_prefix_space": False,
        "bos_token": eos, "eos_token": eos, "unk_token": eos,
        "model_max_length": backbone.max_sequence_length,
    }, indent=2, ensure_ascii=False))
    return out


def write_preset(backbone, tokenizer: Tokenizer, out: Path) -> Path:
    """Write `backbone` + `tokenizer` as a KerasHub preset directory."""
    return save_preset(backbone, tokenizer, out)


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"export target '{out}' already exists and is not empty; choose a new directory")


def export_run(run_dir, to: str, out, checkpoint: str = "latest") -> Path:
    """Export checkpoint `checkpoint` of `run_dir` in format `to` ("hf" or "preset") to `out`.

    The directory appears whole or not at all: it is written beside `out`
    under a temporary name and renamed when complete.
    """
    if to not in FORMATS:
        raise UserError(f"export format '{to}' is not one of {', '.join(FORMATS)}")
    out = Path(out)
    _check_out(out)
    cfg = load_run_config(run_dir)
    with dtype_policy("float32"):  # merge and write full-precision weights
        model = build_causal_lm(cfg)
        tokenizer = load_tokenizer(cfg.model)
        checkpoint_id = restore(model, run_dir, checkpoint)
        backbone = merged_backbone(model)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (write_hf if to == "hf" else write_preset)(backbone, tokenizer, tmp)
        atomic_write_text(tmp / PROVENANCE_FILE, json.dumps({
            "run": str(Path(run_dir).resolve()), "checkpoint": checkpoint_id, "format": to,
            "lora_merged": cfg.lora.enabled, "config_hash": cfg.hash(),
        }, indent=2))
        _check_out(out)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except OSError as e:
        raise UserError(f"could not write export to '{out}': {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
