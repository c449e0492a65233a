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
    kgpt2 import     -> kgpt2.legacy_import           a KerasNLP / Keras 2 checkpoint as a KerasHub preset
    kgpt2 tokenizer  -> kgpt2.tokenizer_training      your own BPE or character tokenizer
    kgpt2 pretrain   -> kgpt2.model.scratch, kgpt2.pretrain from-scratch presets, run summary
    kgpt2 export     -> kgpt2.export.export_run       Hugging Face / KerasHub preset directory

Here each verb is registered with its help line and what runs it; the rest of the command line is in modules
of one role each: the verbs' options (`kgpt2.cli_options`), the registry and the parser (`kgpt2.cli_parser`),
the argument types they share (`kgpt2.cli_args`), a verb's end as an exit status (`kgpt2.cli_runner`); what
each verb prints is worded in `kgpt2.reports`. The verbs' modules are imported inside each verb, and Keras only
for the verbs registered as needing it: `kgpt2 --help`, `kgpt2 recipes` and `kgpt2 tokenizer` never import it.
`key=value` overrides may come before or after the options.

A user's mistake (missing file, unknown key, bad preset) prints one line
`kgpt2: error: ...` and exits with status 2; never a traceback.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path

from kgpt2 import backend

backend.choose_backend()

from kgpt2 import cli_options as options  # noqa: E402  (stdlib only)
from kgpt2 import reports  # noqa: E402  (stdlib only)
from kgpt2.cli_args import unescape  # noqa: E402  (stdlib only)
from kgpt2.cli_parser import VERBS, build_parser, parse_args, verb  # noqa: E402,F401  (stdlib only; kept importable here)
from kgpt2.cli_runner import exit_process, progress_lines_on_stderr, run_verb  # noqa: E402  (stdlib only)
from kgpt2.errors import UserError  # noqa: E402

CHECKPOINT_KEPT = ("every checkpoint written is kept whole; run the same command to resume (or to start again, "
                   "if none was written yet)")
PREPARE_OFFLINE_HINT = ("to work offline, pass --tokenizer DIR (vocabulary.json + merges.txt, or OpenAI's "
                        "encoder.json + vocab.bpe) or --preset with a local preset directory")


@verb("prepare", "turn a corpus into token shards", options.prepare_options, keras="late",
      interrupted="a shard set is moved into --out only once complete, so no half-written set is left; "
                  "run the same command to start again")
def _prepare(a):
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


@verb("train", "staged fine-tuning with checkpoints and resume", options.train_options, interrupted=CHECKPOINT_KEPT)
def _train(a):
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
        rows, standing = dry_run_plan(cfg)
        print(reports.plan_table(cfg.train.stages, rows, cfg.train.gradient_accumulation_steps, standing))
        return
    print(reports.train_report(train(cfg, verbose=0 if a.quiet else "auto", require_checkpoint=a.resume)))


@verb("recipes", "list the run configs that ship with kgpt2, or copy one out to edit", options.recipes_options,
      keras="never")
def _recipes(a):
    from kgpt2 import recipes

    if a.copy is None:
        if a.dest:
            raise UserError(f"DEST '{a.dest}' goes with --copy NAME")
        print(reports.recipe_list(recipes.listing()))
        return
    out = recipes.copy(a.copy, a.dest)
    print(f"copied recipe {a.copy} to {out}; use it with: kgpt2 {recipes.verb_for(out)} --config "
          f"{shlex.quote(str(out))}")


@verb("evaluate", "accuracy, loss and perplexity of checkpoints on a split", options.evaluate_options)
def _evaluate(a):
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


@verb("generate", "generate text from a run's checkpoint", options.generate_options, keras="late")
def _generate(a):
    try:
        a.prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # argv bytes that are not UTF-8 arrive as lone surrogates (surrogateescape)
        raise UserError(f"--prompt is not valid UTF-8 text (character {e.start + 1} is not); check the "
                        "encoding of the terminal or script that passed it") from None
    # Settings are checked before Keras (~10 s) and the model (~10 s more): a bad --temperature is said at once.
    checked = _generate_settings(a)
    if checked is not None:  # a run: say what takes the next seconds (stderr; stdout stays the text alone)
        which = "the latest checkpoint" if a.checkpoint == "latest" else f"checkpoint {a.checkpoint}"
        logging.getLogger("kgpt2").info("loading %s of %s ...", which, a.run)
    backend.import_keras_quietly()
    from kgpt2.generate import Generator, Settings, load_for_generation

    model, tokenizer, cfg = load_for_generation(a.run, a.checkpoint, a.weights)
    s = Settings.from_config(checked or cfg.generate, **_setting_options(a))
    if a.template is None and s.template != "plain":  # the output shows the prompt, not the template around it
        logging.getLogger("kgpt2").info("the prompt goes in the run's %s template (generate.template); --template "
                                        "plain gives the model the text as it is", s.template)
    gen = Generator(model, tokenizer)
    if a.stream:
        pieces = gen.stream(a.prompt, s)  # first: its notes and errors come before the prompt is printed
        print(a.prompt, end="", flush=True)
        for piece in pieces:
            print(piece, end="", flush=True)
        print()
    else:
        print(a.prompt + gen.generate(a.prompt, s))


def _setting_options(a) -> dict:
    """generate's options that change the run's [generate] settings (None: not given, the run's stands)."""
    given = dict(sampler=a.sampler, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                 max_length=a.max_length, max_new_tokens=a.max_new_tokens, seed=a.seed, template=a.template,
                 num_beams=a.num_beams)
    return {k: v for k, v in given.items() if v is not None}


def _generate_settings(a):
    """The run's [generate] settings with the options given, checked (the same sentences as the config's own
    checks) without Keras; None where --run has no config.json, which loading the run then explains."""
    import dataclasses

    from kgpt2.config import config_from_dict
    from kgpt2.run_config import read_run_config

    path = Path(a.run) / "config.json"
    if not path.is_file():
        return None
    return dataclasses.replace(config_from_dict(read_run_config(path)[0]).generate, **_setting_options(a))


@verb("serve", "an OpenAI-compatible HTTP API (completions, chat, streaming) on a run's checkpoint",
      options.serve_options)
def _serve(a):
    from kgpt2.serve import serve

    serve(a.run, a.checkpoint, a.host, a.port, a.api_key, a.slots, a.max_queue, weights=a.weights,
          log_requests=not a.quiet)


@verb("demo", "Gradio app comparing base and fine-tuned answers side by side", options.demo_options,
      interrupted="every vote cast is kept in its run's votes.jsonl")
def _demo(a):
    from kgpt2.demo import launch

    launch(run=a.run, checkpoints_root=a.checkpoints_root, host=a.host, port=a.port, share=a.share)


@verb("align", "align a model to preferences (align.loss: dpo, ipo, hinge, simpo, orpo, kto); resumable",
      options.align_options, interrupted=CHECKPOINT_KEPT)
def _align(a):
    from kgpt2.align import align
    from kgpt2.config import load_config

    cfg = load_config(a.config, list(a.overrides) + ([f"train.device={a.device}"] if a.device else []))
    print(reports.align_report(align(cfg, verbose=0 if a.quiet else "auto"), cfg.run_dir))


@verb("quickstart", "the whole pipeline offline on CPU: tokenizer, tiny GPT-2, stages, evaluation",
      options.quickstart_options, interrupted="every checkpoint its run wrote is kept whole; run the same command to resume")
def _quickstart(a):
    from kgpt2.evaluation_table import format_table
    from kgpt2.quickstart import quickstart

    r = quickstart(a.checkpoints_root, a.overrides, verbose=0 if a.quiet else "auto")  # -q: no Keras progress
    print(reports.quickstart_report(r, format_table(r["evaluation"])))


@verb("export", "write a run's model (LoRA merged) as a Hugging Face GPT-2 or a KerasHub preset, or its PEFT adapter",
      options.export_options,
      interrupted="an export is moved into place only once complete, so no half-written folder is left")
def _export(a):
    from kgpt2.export import export_run, exported_checkpoint

    out = export_run(a.run, a.to, a.out, checkpoint=a.checkpoint)
    print(reports.export_report(a.run, exported_checkpoint(out), a.to, out))


@verb("import", "read a KerasNLP GPT-2 saved under TF/Keras 2 (.ckpt or .weights.h5) into a KerasHub preset",
      options.import_options,
      interrupted="a preset is moved into place only once complete, so no half-written folder is left")
def _import(a):
    from kgpt2.legacy_import import import_legacy

    out = import_legacy(a.legacy, a.out, a.tokenizer)
    print(reports.import_report(a.legacy, out))


@verb("tokenizer", "train your own tokenizer: byte-level BPE (GPT-2 style) or characters", options.tokenizer_options,
      keras="never")
def _tokenizer(a):
    from kgpt2.tokenizer_training import train_tokenizer

    if not a.char and not a.vocab_size:
        raise UserError("give --vocab-size N for a BPE tokenizer, or --char for a character-level one")
    if a.char and a.vocab_size:
        raise UserError("--char and --vocab-size do not go together: a character tokenizer's size is the number of "
                        "distinct characters in --source (drop --char for a BPE of that size)")
    tok = train_tokenizer(a.source, a.out, a.vocab_size, char=a.char, fmt=a.fmt, min_frequency=a.min_frequency)
    print(reports.tokenizer_report(tok, a.out, a.vocab_size, a.min_frequency))


@verb("pretrain", "from-scratch models: `init` saves a fresh GPT-2 preset, `summary` reads a run's speed and best loss",
      options.pretrain_options)
def _pretrain(a):
    if a.action == "summary":
        from kgpt2.pretrain import format_summary, run_summary

        if not a.run:
            raise UserError("pretrain summary needs --run DIR")
        summary = run_summary(a.run)
        print(json.dumps(summary, indent=2) if a.json else format_summary(summary))
        return
    if a.run:  # --run is summary's: init makes the preset a run of --config starts from
        raise UserError("pretrain init takes no --run (that is for pretrain summary); it reads --config and "
                        "key=value overrides, e.g. run=NAME, and writes NAME's preset (or --out DIR)")
    from kgpt2.config import load_config
    from kgpt2.model.scratch import PRESET_DIR, init_preset

    cfg = load_config(a.config, a.overrides)
    out = Path(a.out or cfg.run_dir / PRESET_DIR)
    if not a.out and out.is_dir() and any(out.iterdir()):
        raise UserError(f"run '{cfg.run_dir}' already has its preset '{out}' (its checkpoints start from it); "
                        "give --out DIR for a new one")
    print(f"preset saved in {init_preset(cfg, out)}")


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
