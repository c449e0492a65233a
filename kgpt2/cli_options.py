"""Each verb's options: what `kgpt2 VERB --help` lists, one function per verb, in the order of `kgpt2 --help`
(stdlib only, so `kgpt2 --help` stays fast). `kgpt2.cli` registers each with the verb that reads them; the
shared argument types (a whole number, a port, OUT or --out) are in `kgpt2.cli_args`.

    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> demo_options(p)
    >>> p.parse_args(["--port", "7861"]).port
    7861
"""

from __future__ import annotations

import argparse

from kgpt2.cli_args import CHECKPOINT_HELP, PORT, RUN_HELP, output_folder, whole_number
from kgpt2.data.sources import CONTENTS, FORMATS  # stdlib only
from kgpt2.generation.templates import TEMPLATES  # stdlib only

WEIGHTS = ["auto", "float32", "bfloat16", "int8"]
WEIGHTS_HELP = "weights to decode with (default: the run's generate.weights)"
DEVICE_HELP = "auto, cpu, gpu, gpu:N; sets train.device (default: the config's, auto)"
HOST_HELP = "127.0.0.1 (default): this machine only; 0.0.0.0 to listen on every interface"


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML run config, a run's config.json, or a recipe's name (`kgpt2 recipes`); "
                   "defaults fill the rest")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.batch_size=4")


def prepare_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="file, folder, 'pydoc', or hf:<datasets id>")
    p.add_argument("--out", required=True, help="output shard directory: a new or empty folder, or a shard set "
                   "`kgpt2 prepare` wrote, which is replaced")
    p.add_argument("--format", dest="fmt", choices=FORMATS, help="override format detection")
    p.add_argument("--contents", default="both", choices=CONTENTS, help="of papers: abstract, body or both (default)")
    p.add_argument("--splits", default="auto", metavar="{auto,hash,train,tail:F}",
                   help="auto (default): the source's own splits, else by article, 90/5/5%% train/validation/test; "
                        "hash: always by article; train: everything in train; tail:F: the last F of each document's "
                        "text is validation, e.g. tail:0.1 (nanoGPT)")
    p.add_argument("--text-column", default="text", help="the column of text in a table or JSON source (default: text)")
    p.add_argument("--separator", default=None,
                   help="split plain text files into documents at this string (backslash escapes: '\\n\\n')")
    p.add_argument("--preset", default="gpt2_base_en",
                   help="tokenise with this preset's tokenizer (default: gpt2_base_en)")
    p.add_argument("--tokenizer", default="", help="directory with vocabulary.json + merges.txt, vocab.json + "
                   "merges.txt, encoder.json + vocab.bpe or tokenizer.json (overrides --preset)")
    p.add_argument("--seed", type=int, default=1337, help="of the article split (default: 1337)")
    p.add_argument("--threads", type=whole_number(1), default=None, help="encoding threads (default: all usable cores)")


def train_options(p: argparse.ArgumentParser) -> None:
    _config(p)
    p.add_argument("--run", metavar="DIR", help="resume or continue the run in DIR with its own config.json "
                   "(key=value changes it: more stages, epochs, new shards; recorded in the run)")
    p.add_argument("--resume", action="store_true", help="only resume: stop if the run has no checkpoint yet (without "
                   "--resume a run resumes from its newest checkpoint anyway, when it has one)")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--devices", help="data-parallel over this many devices, or 'all' (JAX; batch_size is the global "
                   "batch); sets train.devices (default: the config's, 1)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved stage plan and stop")


def recipes_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--copy", metavar="NAME", help="copy recipe NAME to DEST (default ./NAME.toml); never overwrites")
    p.add_argument("dest", nargs="?", metavar="DEST", help="file, or existing folder to put NAME.toml in (as with cp, "
                   "a DEST ending in / must be a folder)")


def evaluate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory, e.g. checkpoints/quickstart")
    p.add_argument("--checkpoint", default="latest",
                   help="latest (default: the newest whose weights verify), all (every stage end, and the newest "
                        "if it is not one), base, best, ckpt-N or N, stage-N, or a comma list of these")
    p.add_argument("--split", default="test", help="test (default), validation or train (an align run is scored on "
                   "its held-out preference pairs, unless --shards is given)")
    p.add_argument("--compare", choices=["base"], help="also evaluate the untrained base model")
    p.add_argument("--max-batches", type=whole_number(1), default=None,
                   help="the split's first N batches (default: all)")
    p.add_argument("--json", action="store_true", help="print machine-readable results")
    p.add_argument("--shards", help="the run's shard directory, where a moved run no longer finds it")


def generate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help=RUN_HELP)
    p.add_argument("--checkpoint", default="latest", help=CHECKPOINT_HELP)
    p.add_argument("--prompt", required=True, help="the text the model continues (or answers, in a template)")
    p.add_argument("--sampler", choices=["greedy", "top_k", "top_p", "random", "beam"],
                   help="how the next token is picked: greedy (the likeliest), top_k, top_p, random (from every "
                        "token), beam (default: the run's generate.sampler)")
    p.add_argument("--temperature", type=float, help="below 1 surer, above 1 more varied (default: the run's)")
    p.add_argument("--top-k", type=int, help="top_k: sample among the K likeliest tokens (default: the run's)")
    p.add_argument("--top-p", type=float, help="top_p: sample among the likeliest tokens holding P of the probability "
                   "(default: the run's)")
    p.add_argument("--max-length", type=int,
                   help="prompt + new tokens, at most (default: the run's generate.max_length)")
    p.add_argument("--max-new-tokens", type=int, help="new tokens, at most; 0: up to --max-length (default: the "
                   "run's generate.max_new_tokens)")
    p.add_argument("--seed", type=int, help="the same seed and settings give the same text (default: the run's "
                   "generate.seed)")
    p.add_argument("--template", choices=TEMPLATES, help="prompt template (default: the run's generate.template)")
    p.add_argument("--num-beams", type=int, help="beams for --sampler beam (default: the run's generate.num_beams)")
    p.add_argument("--stream", action="store_true", help="print tokens as they come")
    p.add_argument("--weights", choices=WEIGHTS, help=WEIGHTS_HELP)


def serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help=RUN_HELP)
    p.add_argument("--checkpoint", default="latest", help=CHECKPOINT_HELP)
    p.add_argument("--host", default="127.0.0.1", help=HOST_HELP)
    p.add_argument("--port", type=PORT, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes")
    p.add_argument("--slots", type=whole_number(1), default=8, help="requests decoded together (default: 8)")
    p.add_argument("--max-queue", type=whole_number(0), default=64,
                   help="requests that may wait for a slot; more are answered 429 (default: 64)")
    p.add_argument("--weights", choices=WEIGHTS, help=WEIGHTS_HELP)
    # The same switch as `kgpt2 -q serve` (dest "quiet"); SUPPRESS: leaving it out keeps what -q set.
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="only warnings and results: no log line per request (time, method, path, status, tokens, "
                        "latency) on stderr")


def demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", default=None, help="run to open first: its name under --checkpoints-root, or its directory "
                   "(default: quickstart, else the first run there that opens)")
    p.add_argument("--checkpoints-root", default="checkpoints",
                   help="the folder whose runs the page lists (default: checkpoints)")
    p.add_argument("--host", default="127.0.0.1", help=HOST_HELP)
    p.add_argument("--port", type=PORT, default=7860, help="port to listen on (default: 7860)")
    p.add_argument("--share", action="store_true", help="ask Gradio for a public share link")


def align_options(p: argparse.ArgumentParser) -> None:
    _config(p)
    p.add_argument("--device", help=DEVICE_HELP)
    p.set_defaults(unrecognized=_what_align_takes)


def _what_align_takes(options: list[str]) -> str:
    """`kgpt2 align --shards DIR` (or train's --run, --resume): argparse's "unrecognized arguments: --shards" said
    nothing of what align takes instead (kgpt2.cli_parser.parse_args asks a verb's `unrecognized` for the line)."""
    resume = ("an align run resumes when its command is run again (or with --config RUN/config.json); "
              if {"--run", "--resume"} & set(options) else "")
    return (f"kgpt2 align has no {' or '.join(options)} option{'s' if len(options) > 1 else ''}: {resume}its data is "
            "align.data=[\"FILE\", ...] (preference files of prompt, chosen and rejected: JSON Lines, a JSON array or "
            "CSV) or a demo run's folder, and it takes --config, --device and key=value overrides")


def quickstart_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoints-root", default="checkpoints", help="where the quickstart run is made (default: "
                   "checkpoints, i.e. checkpoints/quickstart)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the quickstart's config, e.g. "
                   "run=second")


def export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory, e.g. checkpoints/quickstart")
    p.add_argument("--checkpoint", default="latest", help=CHECKPOINT_HELP)
    p.add_argument("--to", required=True, choices=["hf", "preset", "peft"],
                   help="hf: transformers format; preset: KerasHub preset; peft: PEFT adapter + its HF base in base/ "
                        "(all float32: there is no int8 export format; a model.quantize base is dequantised, and "
                        "model.quantize quantises the export again where it is a model.preset)")
    output_folder(p, "new output directory")


def import_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("legacy", help="NAME.ckpt (beside NAME.ckpt.index + .data-*) or NAME.weights.h5")
    output_folder(p, "new preset directory (use it as model.preset)")
    p.add_argument("--tokenizer", required=True, help="its tokenizer: a preset name (gpt2_base_en), a preset or HF "
                   "directory, or vocabulary.json + merges.txt")


def tokenizer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["train"], help="the one action: train a tokenizer")
    p.add_argument("--source", required=True, help="file or folder of text (any `prepare` source)")
    p.add_argument("--out", required=True, help="output directory (use it as --tokenizer / model.tokenizer)")
    p.add_argument("--vocab-size", type=int, default=0,
                   help="BPE vocabulary size, end-of-text included (give it, or --char)")
    p.add_argument("--char", action="store_true", help="one token per distinct character (nanoGPT shakespeare_char)")
    p.add_argument("--format", dest="fmt", choices=FORMATS, help="override format detection")
    p.add_argument("--min-frequency", type=whole_number(1), default=2, help="BPE: merges seen fewer times are not made "
                   "(default: 2)")
    _name_the_missing_action(p, "kgpt2 tokenizer train --source ... --out ...")


def _name_the_missing_action(p: argparse.ArgumentParser, commands: str) -> None:
    """`kgpt2 tokenizer --source X --out Y` (the action forgotten): argparse's "the following arguments are
    required: action" names no action to give, so the sentence shows the `commands` with it."""
    argparse_error = p.error

    def error(message: str):
        if message.startswith("the following arguments are required: action"):
            message = f"the action is missing: {commands}"
        argparse_error(message)

    p.error = error


def pretrain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["init", "summary"], help="init: save a fresh GPT-2 preset for --config; "
                   "summary: a run's speed and best loss (--run)")
    p.add_argument("--config", help="TOML run config ([model] shape and model.tokenizer); for init")
    p.add_argument("--out", help="init: preset directory (default: <run>/preset, which `train` uses for "
                   "model.preset = \"scratch\")")
    p.add_argument("--run", help="summary: run directory")
    p.add_argument("--json", action="store_true", help="summary: machine-readable")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="init: config overrides, e.g. model.num_layers=4")
    _name_the_missing_action(p, "kgpt2 pretrain init --config FILE, or kgpt2 pretrain summary --run RUN")
