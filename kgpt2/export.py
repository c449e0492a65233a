"""Export a run's fine-tuned model as a Hugging Face GPT-2 or a KerasHub preset.

    kgpt2 export --run checkpoints/pubmed --to hf exported/pubmed-hf
    kgpt2 export --run checkpoints/pubmed --checkpoint stage-2 --to preset exported/pubmed-preset

Both formats hold one plain GPT-2: LoRA/rsLoRA/DoRA folded into the kernels,
an int8/int4 base dequantised (there is no int8 export format; one line says how
closely the float export matches the run, kgpt2.model.quantize.dequantisation_check),
the vocabulary padding (model.pad_vocabulary_to) cut off, float32 weights, and
kgpt2's own tokenizer files. `--to peft` writes
the run's adapter as PEFT's adapter_config.json + adapter_model.safetensors
(kgpt2.model.peft_adapters) and the run's base model, unadapted (dequantised if the
run's base was quantised), as a Hugging Face GPT-2 in `base/`:
`PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(out / "base"), out)`
computes what the run computes, and `lora.init_from = out` with
`model.preset = out/base` gives the run back. The `hf` directory (config.json,
model.safetensors, vocab.json, merges.txt, tokenizer_config.json with the run's
prompt template as its `chat_template`, generation_config.json with its `[generate]`
sampler settings) loads with
`transformers.GPT2LMHeadModel.from_pretrained` and `AutoTokenizer`; either
directory also works as kgpt2's `model.preset` to train further.

    >>> from kgpt2.export import export_run
    >>> # export_run("checkpoints/quickstart", "hf", "exported/quickstart-hf")
    >>> # import transformers
    >>> # transformers.GPT2LMHeadModel.from_pretrained("exported/quickstart-hf")
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import keras_hub
from safetensors import SafetensorError

from kgpt2.errors import UserError, os_error_sentence
from kgpt2.io import atomic_write_text, new_folder, refuse_used_folder
from kgpt2.model.adapters import merged_backbone as merge
from kgpt2.model.models import build_causal_lm, save_preset
from kgpt2.model.peft_adapters import write_peft_adapter
from kgpt2.model.quantize import dequantisation_check
from kgpt2.model.tokenizer_protocol import Tokenizer
from kgpt2.run import BASE, build_run_model, load_run_config, restore
from kgpt2.serving.checkpoint_names import resolve as resolve_checkpoint
from kgpt2.training.devices import dtype_policy

log = logging.getLogger("kgpt2")
FORMATS = ("hf", "preset", "peft")
PROVENANCE_FILE = "kgpt2_export.json"


def merged_backbone(model) -> keras_hub.models.GPT2Backbone:
    """A plain float32 GPT2Backbone of `model` (a GPT2CausalLM): adapters merged,
    int8/int4 kernels dequantised, vocabulary padding cut (kgpt2.model.adapters)."""
    return merge(model.backbone)


# Jinja chat templates (transformers' `apply_chat_template`) for the run's prompt template, rendering what
# `kgpt2 serve`'s /v1/chat/completions prompts the run with (kgpt2.serve.chat_ids, kgpt2.generation.templates). EOS is
# the tokenizer's end-of-text token text: transformers splits it out as the special token, as kgpt2 encodes it.
CHAT_TEMPLATES = {
    "chat": (
        "{%- for m in messages -%}"
        "{%- set role = 'system' if m['role'] == 'developer' else m['role'] -%}"
        "{%- if role not in ['system', 'user', 'assistant'] or m['content'] is not string -%}"
        "{{- raise_exception('each message needs a role (system, user or assistant) and a text content') -}}"
        "{%- endif -%}"
        "{{- ('' if loop.first else '\\n') + '<|' + role + '|>\\n' + m['content'] | trim + EOS -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt and (messages | length == 0 or messages[-1]['role'] != 'assistant') -%}"
        "{{- '\\n<|assistant|>\\n' -}}"
        "{%- endif -%}"),
    # The last user message is the instruction, the messages before it (joined by newlines) its input.
    "instruction": (
        "{%- set ns = namespace(last=messages | length - 1) -%}"
        "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last = loop.index0 -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if messages | length == 0 or ns.last < messages | length - 1 or messages[-1]['role'] == 'assistant' -%}"
        "{{- raise_exception('the instruction template answers the last user message: end with it') -}}"
        "{%- endif -%}"
        "{%- set context = messages[:ns.last] | map(attribute='content') | join('\\n') | trim -%}"
        "{{- '### Instruction:\\n' + messages[ns.last]['content'] | trim + '\\n\\n' -}}"
        "{%- if context -%}{{- '### Input:\\n' + context + '\\n\\n' -}}{%- endif -%}"
        "{{- '### Response:\\n' -}}"),
}


def chat_template(template: str, eos: str) -> str | None:
    """The Jinja chat template for prompt template `template` (None for "plain": no messages form)."""
    jinja = CHAT_TEMPLATES.get(template)
    return None if jinja is None else jinja.replace("EOS", json.dumps(eos))


def generation_config(eos_id: int, generate=None, context: int | None = None) -> dict:
    """generation_config.json: the end-of-text id (also as the padding id, as transformers pads GPT-2, which has
    no padding token: without it transformers 4.x warned "Setting `pad_token_id` to `eos_token_id`" on every
    `generate`), and the run's `[generate]` settings (`generate`, a GenerateConfig) in transformers'
    GenerationConfig names, so `model.generate()` samples as `kgpt2 generate` does by default (without them
    transformers decodes greedily, 20 new tokens). kgpt2's `seed` has no place there; a `sampler`'s unused
    settings are left out (transformers warns about them). Where top-p and top-k cut differently:
    `generation_difference`. Lengths are capped at the model's `context` (n_positions), as `kgpt2 generate` caps
    them: transformers' `generate()` does not, and past it fails with "IndexError: index out of range in self".

    >>> from kgpt2.config_sections import GenerateConfig
    >>> generation_config(0, GenerateConfig(sampler="top_k", top_k=40, max_new_tokens=64))
    {'bos_token_id': 0, 'eos_token_id': 0, 'pad_token_id': 0, 'max_new_tokens': 64, 'do_sample': True, 'temperature': 0.8, 'top_k': 40, 'top_p': 1.0}
    """
    config = {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}
    if generate is None:
        return config
    g = generate
    # kgpt2's max_length counts the prompt, as transformers' does; max_new_tokens (when set) overrides it in both
    # (max_new_tokens leaves room for a one-token prompt)
    config.update({"max_new_tokens": _capped("max_new_tokens", g.max_new_tokens, (context or 0) - 1, context)}
                  if g.max_new_tokens else {"max_length": _capped("max_length", g.max_length, context or 0, context)})
    if g.sampler == "greedy":
        return config | {"do_sample": False}
    if g.sampler == "beam":
        return config | {"do_sample": False, "num_beams": g.num_beams}
    # kgpt2's top_p sampler also keeps its top_k cut (kgpt2.generate.Settings.sampling); "random" keeps all
    return config | {"do_sample": True, "temperature": g.temperature, "top_k": 0 if g.sampler == "random" else g.top_k,
                     "top_p": g.top_p if g.sampler == "top_p" else 1.0}


def _capped(name: str, length: int, limit: int, context: int | None) -> int:
    """`length` of setting `name`, at most `limit` where the model's `context` is known; a line when it is cut."""
    if context is None or length <= limit:
        return length
    log.info("generation_config.json: %s %d -> %d, as the model's context is %d tokens (transformers' generate() "
             "fails past it)", name, length, limit, context)
    return limit


def generation_difference(generate, vocabulary_size: int) -> str | None:
    """What generation_config.json makes transformers sample differently from `kgpt2 generate`, or None.

    kgpt2's top_p sampler keeps the top-k tokens that are also in the nucleus of the whole distribution
    (KerasHub's TopPSampler(p, k)); transformers takes the nucleus of what top-k kept, renormalised, which is
    the same tokens or fewer of them, never others. Both cuts are written all the same: top_p alone would sample
    from the whole nucleus where kgpt2 caps it at top_k tokens, tokens kgpt2 never samples.

    >>> from kgpt2.config_sections import GenerateConfig
    >>> generation_difference(GenerateConfig(sampler="top_k", top_k=40), 50257) is None
    True
    """
    g = generate
    if g is None or g.sampler != "top_p" or g.top_p >= 1.0 or g.top_k >= vocabulary_size:
        return None  # one cut, or a top-k that keeps every token: transformers samples as kgpt2 does
    return (f"generation_config.json: transformers applies top_p={g.top_p:g} to the {g.top_k} tokens top_k kept, "
            f"renormalised, kgpt2 to the whole distribution, so model.generate() can sample from fewer tokens than "
            f"kgpt2 generate (never from others) where the top-{g.top_k} cut drops probability")


def write_hf(backbone, tokenizer: Tokenizer, out: Path, template: str = "plain", generate=None) -> Path:
    """Write `backbone` + `tokenizer` as a Hugging Face GPT-2 directory (with `template`'s chat template and
    `generate`'s sampler settings, a GenerateConfig, in generation_config.json)."""
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
                      json.dumps(generation_config(tokenizer.eos_id, generate, backbone.max_sequence_length), indent=2))
    return write_hf_tokenizer(tokenizer, out, backbone.max_sequence_length, template)


def write_hf_tokenizer(tokenizer: Tokenizer, out: Path, model_max_length: int, template: str = "plain") -> Path:
    """Write `tokenizer` as the BPE files transformers' GPT2Tokenizer reads, with `template`'s chat template."""
    eos = next(t for t, i in tokenizer.vocabulary.items() if i == tokenizer.eos_id)
    atomic_write_text(out / "vocab.json", json.dumps(tokenizer.vocabulary, ensure_ascii=False))
    merges = ["#version: 0.2"] + [" ".join(m) for m in tokenizer.merges]
    atomic_write_text(out / "merges.txt", "\n".join(merges) + "\n")
    tokenizer_config = {
        "tokenizer_class": "GPT2Tokenizer", "model_type": "gpt2", "add_prefix_space": False,
        "bos_token": eos, "eos_token": eos, "unk_token": eos, "model_max_length": model_max_length,
    }
    if chat_template(template, eos):
        tokenizer_config["chat_template"] = chat_template(template, eos)
    atomic_write_text(out / "tokenizer_config.json", json.dumps(tokenizer_config, indent=2, ensure_ascii=False))
    return out


def write_preset(backbone, tokenizer: Tokenizer, out: Path) -> Path:
    """Write `backbone` + `tokenizer` as a KerasHub preset directory."""
    return save_preset(backbone, tokenizer, out)


def exported_checkpoint(out) -> str:
    """The checkpoint an export holds, as `kgpt2 export` prints it: "ckpt-340: latest, end of stage 2, step 340"."""
    return json.loads((Path(out) / PROVENANCE_FILE).read_text())["checkpoint_line"]


def base_config(cfg):
    """The config of the base a run's adapter goes on: its preset, no trained adapter.

    A quantised base is what the adapter was trained against, so it stays quantised (and is dequantised on
    export); Config refuses a quantised base without LoRA, so it keeps fresh adapters, whose B of zeros adds
    exactly nothing. A float base simply has none.
    """
    enabled = bool(cfg.model.quantize)
    return dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, enabled=enabled, init_from=""))


def export_run(run_dir, to: str, out, checkpoint: str = "latest") -> Path:
    """Export checkpoint `checkpoint` of `run_dir` in format `to` ("hf", "preset" or "peft") to `out`.

    The directory appears whole or not at all: it is written beside `out`
    under a temporary name and renamed when complete.
    """
    if to not in FORMATS:
        raise UserError(f"export format '{to}' is not one of {', '.join(FORMATS)}")
    refuse_used_folder(out, "export")  # before the model is built, not after; as typed, so '' is named empty
    out = Path(out)
    cfg = load_run_config(run_dir)
    if to == "peft" and not cfg.lora.enabled:
        raise UserError(f"run '{run_dir}' trained all weights, not a LoRA adapter; export it with --to hf")
    with dtype_policy("float32"):  # merge and write full-precision weights
        model, tokenizer = build_run_model(cfg, "float32")
        checkpoint_id, line = resolve_checkpoint(run_dir, checkpoint)  # "latest" named by its id, step and stage
        restore(model, run_dir, checkpoint_id)
        # the base the adapter goes on: the run's preset, no adapter
        backbone = merged_backbone(build_causal_lm(base_config(cfg)) if to == "peft" else model)
        check = None
        if cfg.model.quantize:  # against what the export computes (PEFT on base/: the same, merged)
            check = dequantisation_check(model, merged_backbone(model) if to == "peft" else backbone, tokenizer)

    template, generate = cfg.generate.template, cfg.generate
    # a preset has no generation_config.json
    differs = None if to == "preset" else generation_difference(generate, backbone.vocabulary_size)
    try:
        with new_folder(out, "export") as tmp:
            if to == "peft":
                write_hf(backbone, tokenizer, tmp / "base", template, generate)
                write_peft_adapter(model.backbone, cfg.lora, tmp, base=str(out.resolve() / "base"))
            elif to == "hf":
                write_hf(backbone, tokenizer, tmp, template, generate)
            else:
                write_preset(backbone, tokenizer, tmp)
            # An adapter is merged only when one was trained (or started from lora.init_from): the base checkpoint
            # of a LoRA run holds adapters that add nothing.
            adapter = cfg.lora.enabled and (checkpoint_id != BASE or bool(cfg.lora.init_from))
            atomic_write_text(tmp / PROVENANCE_FILE, json.dumps({
                "run": str(Path(run_dir).resolve()), "checkpoint": checkpoint_id, "checkpoint_line": line, "format": to,
                "lora_merged": adapter and to != "peft", "dequantised_from": cfg.model.quantize or None,
                "dequantised_check": check, "generation_differs": differs, "config_hash": cfg.hash(),
            }, indent=2))
    except SafetensorError as e:  # no OSError, so new_folder cannot word it; it has removed the temp folder
        raise UserError(os_error_sentence(e, f"exporting run '{run_dir}' to '{out}'")) from None
    if check:
        log.info("%s", dequantised_line(cfg.model.quantize, check))
    if differs:
        log.info("%s", differs)
    return out


def dequantised_line(mode: str, check: dict) -> str:
    """What an export of a quantised run says: the base is float now, and how closely it matches the run.

    >>> dequantised_line("int8", {"positions": 40, "max_logit_difference": 0.00845, "largest_logit": 0.73,
    ...                           "greedy_agree": 39})
    "the run's int8 base was dequantised to float32 (there is no int8 export format): on a fixed text of 40 tokens its logits differ from the run's by at most 0.0084 (1.2% of the run's largest logit) and its most likely next token is the run's at 39 of 40 positions"
    """
    share = check["max_logit_difference"] / check["largest_logit"] if check["largest_logit"] else 0.0
    return (f"the run's {mode} base was dequantised to float32 (there is no {mode} export format): on a fixed text "
            f"of {check['positions']} tokens its logits differ from the run's by at most "
            f"{check['max_logit_difference']:.2g} ({share:.1%} of the run's largest logit) and its most likely next "
            f"token is the run's at {check['greedy_agree']} of {check['positions']} positions")
