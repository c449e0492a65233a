"""`kgpt2 import`: weights of a KerasNLP GPT-2 saved under TensorFlow / Keras 2, as a KerasHub preset.

The project kgpt2 grew from saved `GPT2CausalLM.save_weights(...)` under
KerasNLP 0.6 on tf.keras (Keras 2). That stack wrote two formats a GPT-2
fits in (its older plain `.h5` cannot hold one: tf-keras raises "name
already exists"):

- a TF checkpoint, `NAME.ckpt` = `NAME.ckpt.index` + `NAME.ckpt.data-*`,
  keyed by the object graph (`layer_with_weights-0/layer_with_weights-2/
  _self_attention_layer/_query_dense/kernel/.ATTRIBUTES/VARIABLE_VALUE`);
- `NAME.weights.h5` (tf-keras's Keras-3-style file), keyed by layer names
  (`layers/gpt2_backbone/layers/transformer_decoder_1/.../vars/0`).

Neither loads into keras-hub's GPT2Backbone by itself: the layer names and
attribute names differ. This maps each variable to its keras-hub path, infers
the shape (layers, width, heads, vocabulary, context), checks that every
variable is found exactly once, and writes a KerasHub preset (usable as
`model.preset`) with the tokenizer you name.

    kgpt2 import old/gpt2_pubmed.ckpt exported/pubmed-preset --tokenizer gpt2_base_en

    >>> from kgpt2.legacy_import import keras_hub_path
    >>> keras_hub_path(["transformer_decoder_1", "_self_attention_layer", "_query_dense", "kernel"], {"transformer_decoder_1": 1})
    'transformer_layer_1/self_attention/query/kernel'
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np

from kgpt2.config import ModelConfig
from kgpt2.errors import UserError
from kgpt2.io import new_folder, refuse_used_folder
from kgpt2.model.models import HUB_SCHEMES, load_tokenizer, save_preset
from kgpt2.run import is_run

# KerasNLP 0.6 attribute names -> keras-hub layer names in a variable path.
SUBLAYERS = {
    "_self_attention_layer": "self_attention", "_query_dense": "query", "_key_dense": "key",
    "_value_dense": "value", "_output_dense": "attention_output",
    "_self_attention_layer_norm": "self_attention_layer_norm", "_feedforward_layer_norm": "feedforward_layer_norm",
    "_feedforward_intermediate_dense": "feedforward_intermediate_dense",
    "_feedforward_output_dense": "feedforward_output_dense",
}
# The order of a layer's variables in a .weights.h5 file (`vars/0`, `vars/1`).
VARIABLE_ORDER = {"norm": ("gamma", "beta"), "embedding": ("embeddings",), "dense": ("kernel", "bias")}
OFFLINE_HINT = ("to work offline, pass --tokenizer DIR (a local KerasHub preset or Hugging Face GPT-2 directory, "
                "or vocabulary.json + merges.txt)")
NOT_LEGACY = ("is not a TensorFlow checkpoint (NAME.ckpt with .index + .data-*) or a .weights.h5 "
              "of a KerasNLP GPT-2 model")


def keras_hub_path(parts: list, blocks: dict) -> str:
    """A keras-hub variable path from a legacy layer/attribute path; `blocks` numbers the decoder layers."""
    head, *rest = parts
    if head in blocks:
        head = f"transformer_layer_{blocks[head]}"
    elif head.startswith("layer_normalization") or head == "layer_norm":
        head = "layer_norm"
    return "/".join([head] + [SUBLAYERS.get(p, p) for p in rest])


def _read_checkpoint(prefix: str) -> dict:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    keys = [k for k in reader.get_variable_to_shape_map() if k.endswith("/.ATTRIBUTES/VARIABLE_VALUE")
            and not k.startswith(("optimizer", "save_counter"))]
    model_level = all(k.startswith("layer_with_weights-0/layer_with_weights-") or not
                      k.startswith("layer_with_weights-0/") for k in keys)
    objects = {}
    for key in keys:
        parts = key[: -len("/.ATTRIBUTES/VARIABLE_VALUE")].split("/")
        if model_level and parts[0] != "layer_with_weights-0":
            parts = ["token_embedding"] + parts[1:]  # the CausalLM's own (tied) token embedding
        elif model_level:
            parts = parts[1:]
        objects["/".join(parts)] = reader.get_tensor(key)
    # In the backbone, layers with weights come as token embedding, position
    # embedding, the decoder blocks, the final layer norm.
    index = {int(m.group(1)) for k in objects if (m := re.match(r"layer_with_weights-(\d+)/", k))}
    blocks = sorted(i for i in index if any(k.startswith(f"layer_with_weights-{i}/_self_attention_layer")
                                             for k in objects))
    names = {0: "token_embedding", 1: "position_embedding", **{b: f"block{j}" for j, b in enumerate(blocks)}}
    if blocks:
        names[max(blocks) + 1] = "layer_norm"
    out = {}
    for key, value in objects.items():
        head, *rest = key.split("/")
        m = re.fullmatch(r"layer_with_weights-(\d+)", head)
        head = names.get(int(m.group(1)), head) if m else head
        out[keras_hub_path([head] + rest, {f"block{j}": j for j in range(len(blocks))})] = value
    return out


def _read_weights_h5(path: Path) -> dict:
    import h5py

    datasets = {}
    with h5py.File(path, "r") as f:
        if "layer_names" in f.attrs:
            raise UserError(f"'{path}' is a Keras 2 .h5 weights file of another model "
                            "(a KerasNLP GPT-2 cannot be saved in that format); save it as .ckpt or .weights.h5")
        f.visititems(lambda name, obj: datasets.update({name: obj[()]}) if isinstance(obj, h5py.Dataset) else None)
    out, parsed = {}, []
    for name, value in datasets.items():
        parts = [p for p in name.split("/") if p != "layers"]
        if "gpt2_backbone" in parts:
            parts = parts[parts.index("gpt2_backbone") + 1:]
        if len(parts) < 3 or parts[-2] != "vars" or parts[0].startswith(("optimizer", "input")):
            continue
        parsed.append((parts[:-2], int(parts[-1]), value))
    # tf-keras numbers unnamed layers per session: transformer_decoder, _1, _2 ...
    decoders = sorted({p[0] for p, _, _ in parsed if re.fullmatch(r"transformer_decoder(_\d+)?", p[0])},
                      key=lambda n: int(n.rsplit("_", 1)[1]) if n[-1].isdigit() else -1)
    blocks = {name: i for i, name in enumerate(decoders)}
    for layer, i, value in parsed:
        last = layer[-1]
        kind = "norm" if "norm" in last else "embedding" if last.endswith("embedding") else "dense"
        out[keras_hub_path(layer + [VARIABLE_ORDER[kind][i]], blocks)] = value
    return out


def read_legacy_weights(path) -> dict:
    """keras-hub variable path -> array, from a legacy TF checkpoint or .weights.h5."""
    path = Path(path).expanduser()
    prefix = re.sub(r"\.(index|data-\d+-of-\d+)$", "", str(path))  # any of the checkpoint's files names it
    if Path(prefix + ".index").is_file():
        return _read_or_refuse(_read_checkpoint, prefix, f"the TF checkpoint '{prefix}'")
    if path.is_file() and path.suffix == ".h5":
        return _read_or_refuse(_read_weights_h5, path, f"'{path}' as a .weights.h5 file")
    _refuse_a_loadable_model(path)
    if not path.exists():  # a TF checkpoint's NAME.ckpt is no file itself: only its .index says it is there
        raise UserError(f"'{path}' does not exist (a TF checkpoint NAME.ckpt is the files NAME.ckpt.index + "
                        "NAME.ckpt.data-*)")
    raise UserError(f"'{path}' {NOT_LEGACY}")


def _refuse_a_loadable_model(path: Path) -> None:
    """A Hugging Face or KerasHub model directory (or a file in one) is a model.preset already, a kgpt2 run's
    folder or file (a stage export, a checkpoint) is a run's: say so."""
    model_dir = path if path.is_dir() else path.parent
    run_here = is_run(model_dir)
    if (model_dir / "config.json").is_file() and not run_here:  # what save_pretrained and save_to_preset write
        where = "is" if path.is_dir() else "is part of"
        raise UserError(f"'{path}' {where} a Hugging Face or KerasHub model directory, which needs no import: use "
                        f"model.preset={model_dir} (docs/interop.md)")
    for run, inside, found in ((model_dir, path, run_here), (model_dir.parent, model_dir, None)):  # or a ckpt-N's run
        if found or (found is None and is_run(run)):
            named = re.fullmatch(r"(stage-\d+)\.weights\.h5|(ckpt-\d+)", inside.name)
            ckpt = (named.group(1) or named.group(2)) if named else ""
            where = "is" if path == run else "is part of"
            init_from = shlex.quote(f"train.init_from={run}" + (f":{ckpt}" if ckpt else ""))
            raise UserError(f"'{path}' {where} the kgpt2 run '{run}', which needs no import: use --run "
                            f"{shlex.quote(str(run))}" + (f" --checkpoint {ckpt}" if ckpt else "")
                            + f", or {init_from} to start a new run from it")


def _read_or_refuse(read, path, what: str) -> dict:
    """`read(path)`; whatever a damaged or foreign file makes TF or h5py raise becomes one sentence naming `what`."""
    try:
        return read(path)
    except UserError:
        raise
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]  # some errors have no message
        raise UserError(f"could not read {what}: {first[:200]}") from None


def legacy_backbone(path):
    """A keras-hub GPT2Backbone holding the legacy weights in `path`."""
    import keras_hub

    weights = read_legacy_weights(path)
    try:
        vocab, hidden = weights["token_embedding/embeddings"].shape
        layers = len({k.split("/")[0] for k in weights if k.startswith("transformer_layer_")})
        _, heads, _ = weights["transformer_layer_0/self_attention/query/kernel"].shape
        intermediate = weights["transformer_layer_0/feedforward_intermediate_dense/kernel"].shape[1]
        context = weights["position_embedding/embeddings"].shape[0]
    except (KeyError, ValueError):
        _refuse_a_loadable_model(Path(path).expanduser())  # e.g. a KerasHub preset's model.weights.h5
        raise UserError(f"'{path}' {NOT_LEGACY} (no GPT-2 token embedding, attention and MLP found)") from None
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=vocab, num_layers=layers, num_heads=heads,
                                             hidden_dim=hidden, intermediate_dim=intermediate,
                                             max_sequence_length=context, dropout=0.0)
    expected = {v.path: v for v in backbone.weights}
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or extra:
        raise UserError(f"'{path}' does not map onto a GPT-2 of its shape: "
                        f"{'missing ' + ', '.join(missing[:3]) if missing else 'unexpected ' + ', '.join(extra[:3])}")
    for name, var in expected.items():
        if tuple(weights[name].shape) != tuple(var.shape):
            raise UserError(f"'{path}': {name} has shape {tuple(weights[name].shape)}, expected {tuple(var.shape)}")
        var.assign(np.asarray(weights[name], "float32"))
    return backbone


def import_legacy(path, out, tokenizer: str) -> Path:
    """Write the legacy model in `path` as a KerasHub preset in `out` with `tokenizer`'s files.

    `tokenizer`: a KerasHub preset name (gpt2_base_en), a preset or Hugging
    Face directory, or a directory with vocabulary.json + merges.txt.
    """
    refuse_used_folder(out, "import")  # before the weights are read, not after; as typed, so '' is named empty
    out = Path(out)
    backbone = legacy_backbone(path)
    tok = import_tokenizer(tokenizer)
    if tok.vocab_size != backbone.vocabulary_size:
        raise UserError(f"tokenizer '{tokenizer}' has {tok.vocab_size} tokens but the model "
                        f"{backbone.vocabulary_size}; name the tokenizer it was trained with")
    with new_folder(out, "import") as tmp:
        save_preset(backbone, tok, tmp)
    return out


def import_tokenizer(tokenizer: str):
    """`--tokenizer`'s tokenizer: a path (anything on disk, or a name with a folder in it) is read as `kgpt2
    prepare --tokenizer` reads one, with its sentences (a file, a folder without tokenizer files, a typo); a bare
    name or a hub handle is a preset's, whose offline hint names --tokenizer, as this command has no model.preset."""
    root = Path(tokenizer).expanduser()
    if not tokenizer.startswith(HUB_SCHEMES) and (root.exists() or "/" in tokenizer or tokenizer.startswith(".")):
        return load_tokenizer(ModelConfig(preset="scratch", tokenizer=str(root)))
    return load_tokenizer(ModelConfig(preset=tokenizer), offline_hint=OFFLINE_HINT)
