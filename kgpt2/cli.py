"""The `kgpt2` command line: one verb per module, so this file is the table of contents.

    kgpt2 prepare    -> kgpt2.data.shards.prepare     corpus -> token shards
    kgpt2 train      -> kgpt2.train.train             staged fit, checkpoints, resume
    kgpt2 recipes    -> kgpt2.recipes                 the configs that ship with kgpt2: list, copy out
    kgpt2 evaluate   -> kgpt2.evaluate.evaluate_run   accuracy / perplexity table
    kgpt2 generate   -> kgpt2.generate                text from a checkpoint
    kgpt2 serve      -> kgpt2.serve                   OpenAI-compatible HTTP API
    kgpt2 demo       -> kgpt2.demo                    Gradio side-by-side app
    kgpt2 quickstart -> kgpt2.quickstart              the whole pipeline, offline
    kgpt2 align      -> kgpt2.align.align             DPO / IPO / hinge / SimPO / ORPO / KTO
    kgpt2 tokenizer  -> kgpt2.tokenizer_training      your own BPE or character tokenizer
    kgpt2 pretrain   -> kgpt2.model.scratch, kgpt2.pretrain from-scratch presets, run summary
    kgpt2 export     -> kgpt2.export.export_run       Hugging Face / KerasHub preset directory

What each verb prints is worded in `kgpt2.reports`, how its end becomes an
exit status in `kgpt2.cli_runner`. The verbs' modules are imported inside each
verb, and Keras only for the verbs registered as needing it: `kgpt2 --help`,
`kgpt2 recipes` and `kgpt2 tokenizer` never import it.
`key=value` overrides may come before or after the options.

A user's mistake (missing file, unknown key, bad preset) prints one line
`kgpt2: error: ...` and exits with status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
from pathlib import Path

from kgpt2 import backend

backend.choose_backend()

from kgpt2 import reports  # noqa: E402  (stdlib only)
from kgpt2.cli_args import CHECKPOINT_HELP, PORT, RUN_HELP, output_folder, settle_output_folder, unescape, whole_number  # noqa: E402  (stdlib only)
from kgpt2.cli_runner import exit_process, progress_lines_on_stderr, run_verb  # noqa: E402  (stdlib only)
from kgpt2.data.sources import CONTENTS, FORMATS  # noqa: E402  (stdlib only: --help stays fast)
from kgpt2.errors import UserError  # noqa: E402
from kgpt2.generation.templates import TEMPLATES  # noqa: E402  (stdlib only)

VERBS = {}  # name -> (factory, help, needs Keras, what Ctrl-C leaves behind)
CHECKPOINT_KEPT = ("every checkpoint written is kept whole; run the same command to resume (or to start again, "
                   "if none was written yet)")
PREPARE_OFFLINE_HINT = ("to work offline, pass --tokenizer DIR (vocabulary.json + merges.txt, or OpenAI's "
                        "encoder.json + vocab.bpe) or --preset with a local preset directory")


KERAS_IMPORTS = ("first", "late", "never")


def verb(name, help, keras: str = "first", interrupted: str = ""):
    """Register a verb. `keras`: when Keras is imported -- "first" (before the verb runs), "late" (the verb
    imports it itself, `backend.import_keras_quietly`, after the checks that need none, so a mistyped path is
    answered at once, not after ~10 s of TensorFlow's start-up) or "never" (TensorFlow's start-up skipped);
    `interrupted`: what Ctrl-C leaves behind, said after "kgpt2: interrupted; "."""
    if keras not in KERAS_IMPORTS:
        raise ValueError(f"keras={keras!r}: one of {KERAS_IMPORTS}")

    def register(fn):
        VERBS[name] = (fn, help, keras, interrupted)
        return fn

    return register


def _add_config(p):
    p.add_argument("--config", help="TOML run config, a run's config.json, or a recipe's name (`kgpt2 recipes`); "
                   "defaults fill the rest")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.batch_size=4")


@verb("prepare", "turn a corpus into token shards", keras="late",
      interrupted="a shard set is moved into --out only once complete, so no half-written set is left; "
                  "run the same command to start again")
def _prepare(p: argparse.ArgumentParser):
    p.add_argument("--source", required=True, help="file, folder, 'pydoc', or hf:<datasets id>")
    p.add_argument("--out", required=True, help="output shard directory")
    p.add_argument("--format", dest="fmt", choices=FORMATS, help="override format detection")
    p.add_argument("--contents", default="both", choices=CONTENTS, help="of papers: abstract, body or both (default)")
    p.add_argument("--splits", default="auto", metavar="{auto,hash,train,tail:F}",
                   help="auto/hash split by article; tail:0.1 = the last 10%% of the text is validation (nanoGPT)")
    p.add_argument("--text-column", default="text", help="the column of text in a table or JSON source (default: text)")
    p.add_argument("--separator", default=None,
                   help="split plain text files into documents at this string (backslash escapes: '\\n\\n')")
    p.add_argument("--preset", default="gpt2_base_en", help="tokenise with this preset's tokenizer")
    p.add_argument("--tokenizer", default="", help="directory with vocabulary.json + merges.txt, vocab.json + merges.txt, encoder.json + "
                   "vocab.bpe or tokenizer.json (overrides --preset)")
    p.add_argument("--seed", type=int, default=1337, help="of the article split (default: 1337)")
    p.add_argument("--threads", type=whole_number(1), default=None, help="encoding threads (default: all usable cores)")

    def run(a):
        from kgpt2.config import ModelConfig
        from kgpt2.data.shard_folder import check_out_folder, local_source
        from kgpt2.data.shards import prepare
        from kgpt2.data.sources import open_source

        # The source (exists, its format) and --out are checked before a tokenizer download, not after:
        # a mistyped path offline is named as such, not as a failed download. Both before Keras (keras="late").
        src = open_source(a.source, a.fmt, contents=a.contents, text_column=a.text_column,
                          separator=unescape(a.separator))
        check_out_folder(Path(a.out), local_source(src))
        backend.import_keras_quietly()
        from kgpt2.model.models import load_tokenizer

        tok = load_tokenizer(ModelConfig(preset=a.preset, tokenizer=a.tokenizer), offline_hint=PREPARE_OFFLINE_HINT)
        m = prepare(src, a.out, tok, splits=a.splits, seed=a.seed, threads=a.threads, progress=not a.quiet)
        print(reports.prepare_report(m, a.out))

    return run


@verb("train", "staged fine-tuning with checkpoints and resume", interrupted=CHECKPOINT_KEPT)
def _train(p):
    _add_config(p)
    p.add_argument("--run", metavar="DIR", help="resume or continue the run in DIR with its own config.json "
                   "(key=value changes it: more stages, epochs, new shards; recorded in the run)")
    p.add_argument("--resume", action="store_true", help="resume from the newest checkpoint (the default when one exists)")
    p.add_argument("--device", help="auto, cpu, gpu, gpu:N")
    p.add_argument("--devices", help="data-parallel over this many devices, or 'all' (JAX; batch_size is the global batch)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved stage plan and stop")

    def run(a):
        from kgpt2.config import load_config
        from kgpt2.train import train
        from kgpt2.training.train_inputs import dry_run_plan

        overrides = list(a.overrides) + ([f"train.device={a.device}"] if a.device else [])
        overrides += [f'train.devices="{a.devices}"'] if a.devices else []
        if a.run is not None:
            if a.config is not None:
                raise UserError("give either --run DIR (a run's own config) or --config, not both")
            if not (Path(a.run) / "config.json").is_file():
                from kgpt2.run import not_a_run

                raise not_a_run(a.run, "train one with --config first",
                                checkpoint_hint="train.init_from={run}:{name} starts a new run from this checkpoint")
        cfg = load_config(Path(a.run) / "config.json" if a.run is not None else a.config, overrides)
        if a.dry_run:
            print(reports.plan_table(cfg.train.stages, dry_run_plan(cfg)))
            return
        print(reports.train_report(train(cfg, verbose=0 if a.quiet else "auto", require_checkpoint=a.resume)))

    return run


@verb("recipes", "list the run configs that ship with kgpt2, or copy one out to edit", keras="never")
def _recipes(p):
    p.add_argument("--copy", metavar="NAME", help="copy recipe NAME to DEST (default ./NAME.toml); never overwrites")
    p.add_argument("dest", nargs="?", metavar="DEST",
                   help="file, or existing folder to put NAME.toml in (as with cp, a DEST ending in / must be a folder)")

    def run(a):
        from kgpt2 import recipes

        if a.copy is None:
            if a.dest:
                raise UserError(f"DEST '{a.dest}' goes with --copy NAME")
            print(reports.recipe_list(recipes.listing()))
            return
        out = recipes.copy(a.copy, a.dest)
        print(f"copied recipe {a.copy} to {out}; use it with: kgpt2 {recipes.verb_for(out)} --config "
              f"{shlex.quote(str(out))}")

    return run


@verb("evaluate", "accuracy, loss and perplexity of checkpoints on a split")
def _evaluate(p):
    p.add_argument("--run", required=True, help="run directory, e.g. checkpoints/quickstart")
    p.add_argument("--checkpoint", default="latest",
                   help="latest (default: the newest whose weights verify), all (every stage end, plus the newest if "
                        "it is none), base, best, ckpt-N or N, stage-N, or a comma list of these")
    p.add_argument("--split", default="test", help="test (default), validation or train")
    p.add_argument("--compare", choices=["base"], help="also evaluate the untrained base model")
    p.add_argument("--max-batches", type=whole_number(1), default=None, help="the split's first N batches (default: all)")
    p.add_argument("--json", action="store_true", help="print machine-readable results")
    p.add_argument("--shards", help="the run's shard directory, where a moved run no longer finds it")

    def run(a):
        from kgpt2.evaluate import RunFolderReadOnly, evaluate_run
        from kgpt2.evaluation_table import EvaluationNotSaved, format_table

        try:
            rows = evaluate_run(a.run, a.checkpoint, a.split, compare_base=a.compare == "base",
                                max_batches=a.max_batches, shards=a.shards)
        except EvaluationNotSaved as e:  # the scores still reach the user, then the sentence (exit 2)
            print(json.dumps(e.rows, indent=2) if a.json else format_table(e.rows))
            if not isinstance(e, RunFolderReadOnly):
                raise
            logging.getLogger("kgpt2").warning("%s", e)  # a read-only run: the scores stand, exit 0
            return
        print(json.dumps(rows, indent=2) if a.json else format_table(rows))
        if not a.json:
            split = rows[0].get("split", a.split) if rows else a.split  # an align run: its held-out pairs
            table = Path(a.run) / f"evaluation-{split}.json"
            png = table.with_suffix(".png")  # written last: a disk that filled before it keeps an older one
            fresh = png.is_file() and png.stat().st_mtime >= table.stat().st_mtime
            print(f"saved: {table}, .csv" + (" and .png" if fresh else " (the plot could not be written)"))
            print(reports.evaluate_next(a.run))

    return run


@verb("generate", "generate text from a run's checkpoint")
def _generate(p):
    p.add_argument("--run", required=True, help=RUN_HELP)
    p.add_argument("--checkpoint", default="latest", help=CHECKPOINT_HELP)
    p.add_argument("--prompt", required=True, help="the text the model continues (or answers, in a template)")
    p.add_argument("--sampler", choices=["greedy", "top_k", "top_p", "random", "beam"],
                   help="how the next token is picked (default: the run's generate.sampler)")
    p.add_argument("--temperature", type=float, help="below 1 surer, above 1 more varied (default: the run's)")
    p.add_argument("--top-k", type=int, help="top_k: sample among the K likeliest tokens (default: the run's)")
    p.add_argument("--top-p", type=float, help="top_p: sample among the likeliest tokens holding P of the probability")
    p.add_argument("--max-length", type=int, help="prompt + new tokens, at most (default: the run's generate.max_length)")
    p.add_argument("--max-new-tokens", type=int, help="new tokens, at most; 0: up to --max-length")
    p.add_argument("--seed", type=int, help="the same seed and settings give the same text")
    p.add_argument("--template", choices=TEMPLATES, help="prompt template (default: the run's generate.template)")
    p.add_argument("--num-beams", type=int, help="beams for --sampler beam")
    p.add_argument("--stream", action="store_true", help="print tokens as they come")
    p.add_argument("--weights", choices=["auto", "float32", "bfloat16", "int8"],
                   help="weights to decode with (default: the run's generate.weights)")

    def run(a):
        from kgpt2.generate import Generator, Settings, load_for_generation

        try:
            a.prompt.encode("utf-8")
        except UnicodeEncodeError as e:  # argv bytes that are not UTF-8 arrive as lone surrogates (surrogateescape)
            raise UserError(f"--prompt is not valid UTF-8 text (character {e.start + 1} is not); check the "
                            "encoding of the terminal or script that passed it") from None
        model, tokenizer, cfg = load_for_generation(a.run, a.checkpoint, a.weights)
        s = Settings.from_config(cfg.generate, sampler=a.sampler, temperature=a.temperature, top_k=a.top_k,
                                 top_p=a.top_p, max_length=a.max_length, max_new_tokens=a.max_new_tokens,
                                 seed=a.seed, template=a.template, num_beams=a.num_beams)
        if a.template is None and s.template != "plain":  # the output shows the prompt, not the template around it
            logging.getLogger("kgpt2").info("the prompt goes in the run's %s template (generate.template); --template "
                                            "plain gives the model the text as it is", s.template)
        gen = Generator(model, tokenizer)
        if a.stream:
            print(a.prompt, end="", flush=True)
            for piece in gen.stream(a.prompt, s):
                print(piece, end="", flush=True)
            print()
        else:
            print(a.prompt + gen.generate(a.prompt, s))

    return run


@verb("serve", "an OpenAI-compatible HTTP API (completions, chat, streaming) on a run's checkpoint")
def _serve(p):
    p.add_argument("--run", required=True, help=RUN_HELP)
    p.add_argument("--checkpoint", default="latest", help=CHECKPOINT_HELP)
    p.add_argument("--host", default="127.0.0.1", help="loopback by default; 0.0.0.0 to listen on every interface")
    p.add_argument("--port", type=PORT, default=8000, help="default: 8000")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes")
    p.add_argument("--slots", type=whole_number(1), default=8, help="requests decoded together")
    p.add_argument("--max-queue", type=whole_number(0), default=64, help="requests waiting beyond the slots before 429")
    p.add_argument("--weights", choices=["auto", "float32", "bfloat16", "int8"],
                   help="weights to decode with (default: the run's generate.weights)")
    # The same switch as `kgpt2 -q serve` (dest "quiet"); SUPPRESS: leaving it out keeps what -q set.
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="only warnings and results: no log line per request (time, method, path, status, tokens, "
                        "latency) on stderr")

    def run(a):
        from kgpt2.serve import serve

        serve(a.run, a.checkpoint, a.host, a.port, a.api_key, a.slots, a.max_queue, weights=a.weights,
              log_requests=not a.quiet)

    return run


@verb("demo", "Gradio app comparing base and fine-tuned answers side by side",
      interrupted="every vote cast is kept in its run's votes.jsonl")
def _demo(p):
    p.add_argument("--run", default=None, help="run to open first (default: the quickstart run)")
    p.add_argument("--checkpoints-root", default="checkpoints",
                   help="the folder whose runs the page lists (default: checkpoints)")
    p.add_argument("--host", default="127.0.0.1", help="loopback by default; 0.0.0.0 to listen on every interface")
    p.add_argument("--port", type=PORT, default=7860, help="default: 7860")
    p.add_argument("--share", action="store_true", help="ask Gradio for a public share link")

    def run(a):
        from kgpt2.demo import launch

        launch(run=a.run, checkpoints_root=a.checkpoints_root, host=a.host, port=a.port, share=a.share)

    return run


@verb("align", "align a model to preferences (align.loss: dpo, ipo, hinge, simpo, orpo, kto); resumable",
      interrupted=CHECKPOINT_KEPT)
def _align(p):
    _add_config(p)
    p.add_argument("--device", help="auto, cpu, gpu, gpu:N")

    def run(a):
        from kgpt2.align import align
        from kgpt2.config import load_config

        cfg = load_config(a.config, list(a.overrides) + ([f"train.device={a.device}"] if a.device else []))
        print(reports.align_report(align(cfg, verbose=0 if a.quiet else "auto"), cfg.run_dir))

    return run


@verb("quickstart", "the whole pipeline offline on CPU: tokenizer, tiny GPT-2, stages, evaluation",
      interrupted="every checkpoint its run wrote is kept whole")
def _quickstart(p):
    p.add_argument("--checkpoints-root", default="checkpoints", help="where the quickstart run is made (default: "
                   "checkpoints, i.e. checkpoints/quickstart)")
    p.add_argument("overrides", nargs="*", metavar="key=value")

    def run(a):
        from kgpt2.evaluation_table import format_table
        from kgpt2.quickstart import quickstart

        r = quickstart(a.checkpoints_root, a.overrides)
        print(reports.quickstart_report(r, format_table(r["evaluation"])))

    return run


@verb("export", "write a run's model (LoRA merged) as a Hugging Face GPT-2 or a KerasHub preset, or its PEFT adapter",
      interrupted="an export is moved into place only once complete, so no half-written folder is left")
def _export(p):
    p.add_argument("--run", required=True, help="run directory, e.g. checkpoints/quickstart")
    p.add_argument("--checkpoint", default="latest", help="ckpt id, stage-N, latest, or base")
    p.add_argument("--to", required=True, choices=["hf", "preset", "peft"],
                   help="hf: transformers format; preset: KerasHub preset; peft: PEFT adapter + its HF base in base/ "
                        "(all float32: there is no int8 export format; a model.quantize base is dequantised, and "
                        "model.quantize quantises the export again where it is a model.preset)")
    output_folder(p, "new output directory")

    def run(a):
        from kgpt2.export import export_run, exported_checkpoint

        out = export_run(a.run, a.to, a.out, checkpoint=a.checkpoint)
        print(reports.export_report(a.run, exported_checkpoint(out), a.to, out))

    return run


@verb("import", "read a KerasNLP GPT-2 saved under TF/Keras 2 (.ckpt or .weights.h5) into a KerasHub preset",
      interrupted="a preset is moved into place only once complete, so no half-written folder is left")
def _import(p):
    p.add_argument("legacy", help="NAME.ckpt (beside NAME.ckpt.index + .data-*) or NAME.weights.h5")
    output_folder(p, "new preset directory (use it as model.preset)")
    p.add_argument("--tokenizer", required=True,
                   help="its tokenizer: a preset name (gpt2_base_en), a preset or HF directory, or vocabulary.json + merges.txt")

    def run(a):
        from kgpt2.legacy_import import import_legacy

        out = import_legacy(a.legacy, a.out, a.tokenizer)
        print(reports.import_report(a.legacy, out))

    return run


@verb("tokenizer", "train your own tokenizer: byte-level BPE (GPT-2 style) or characters", keras="never")
def _tokenizer(p):
    p.add_argument("action", choices=["train"])
    p.add_argument("--source", required=True, help="file or folder of text (any `prepare` source)")
    p.add_argument("--out", required=True, help="output directory (use it as --tokenizer / model.tokenizer)")
    p.add_argument("--vocab-size", type=int, default=0, help="BPE vocabulary size, end-of-text included")
    p.add_argument("--char", action="store_true", help="one token per distinct character (nanoGPT shakespeare_char)")
    p.add_argument("--format", dest="fmt", choices=FORMATS, help="override format detection")
    p.add_argument("--min-frequency", type=whole_number(1), default=2, help="BPE: merges seen fewer times are not made")

    def run(a):
        from kgpt2.tokenizer_training import train_tokenizer

        if not a.char and not a.vocab_size:
            raise UserError("give --vocab-size N for a BPE tokenizer, or --char for a character-level one")
        if a.char and a.vocab_size:
            raise UserError("--char and --vocab-size do not go together: a character tokenizer's size is the number of "
                            "distinct characters in --source (drop --char for a BPE of that size)")
        tok = train_tokenizer(a.source, a.out, a.vocab_size, char=a.char, fmt=a.fmt, min_frequency=a.min_frequency)
        print(reports.tokenizer_report(tok, a.out, a.vocab_size, a.min_frequency))

    return run


@verb("pretrain", "from-scratch models: `init` saves a fresh GPT-2 preset, `summary` reads a run's speed and best loss")
def _pretrain(p):
    p.add_argument("action", choices=["init", "summary"])
    p.add_argument("--config", help="TOML run config ([model] shape and model.tokenizer); for init")
    p.add_argument("--out", help="init: preset directory (default: <run>/preset, what `train` uses for preset = \"scratch\")")
    p.add_argument("--run", help="summary: run directory")
    p.add_argument("--json", action="store_true", help="summary: machine-readable")
    p.add_argument("overrides", nargs="*", metavar="key=value")

    def run(a):
        if a.action == "summary":
            from kgpt2.pretrain import format_summary, run_summary

            if not a.run:
                raise UserError("pretrain summary needs --run DIR")
            summary = run_summary(a.run)
            print(json.dumps(summary, indent=2) if a.json else format_summary(summary))
            return
        from kgpt2.config import load_config
        from kgpt2.model.scratch import PRESET_DIR, init_preset

        cfg = load_config(a.config, a.overrides)
        out = Path(a.out or cfg.run_dir / PRESET_DIR)
        if not a.out and out.is_dir() and any(out.iterdir()):
            raise UserError(f"run '{cfg.run_dir}' already has its preset '{out}' (its checkpoints start from it); "
                            "give --out DIR for a new one")
        print(f"preset saved in {init_preset(cfg, out)}")

    return run


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("kgpt2")
    except importlib.metadata.PackageNotFoundError:  # the source tree on PYTHONPATH, not installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kgpt2", description="Fine-tune GPT-2 in stages with Keras 3 / KerasHub.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    parser.add_argument("--version", action="version", version=f"kgpt2 {_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name, (factory, help, keras, interrupted) in VERBS.items():
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=factory(p), keras_import=keras, interrupted=interrupted)
        with contextlib.suppress(argparse.ArgumentError):  # serve has its own, with its own help
            # `kgpt2 train ... -q` as people type it; SUPPRESS: leaving it out keeps what `kgpt2 -q` set
            p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                           help="only warnings and results (the same as kgpt2 -q VERB)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, with `key=value` overrides taken wherever they stand: argparse fills a verb's
    `overrides` list only up to the first option after its other positionals (`pretrain init --config C
    key=value` left key=value unrecognized)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *(w for w in extra if "=" in w and not w.startswith("-"))]
        extra = [w for w in extra if "=" not in w or w.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    settle_output_folder(args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.keras_import == "first":
        backend.import_keras_quietly()
    with progress_lines_on_stderr(args.quiet):
        return run_verb(args)


def console() -> None:
    """The `kgpt2` command (pyproject's script): `main`, then the process ends with its status."""
    exit_process(main())


if __name__ == "__main__":
    console()
