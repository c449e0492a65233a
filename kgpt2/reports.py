"""What the CLI verbs print: each verb's result (a dict or rows) as the text a person reads.

Kept apart from `kgpt2.cli` (argparse only) so the wording of results is in
one place and testable without running a command; the verbs' own tables
(`kgpt2.evaluation_table.format_table`, `kgpt2.pretrain.format_summary`) stay with
the verbs whose results they show.

    >>> from kgpt2.reports import recipe_list
    >>> print(recipe_list([("alpaca", "instruction tuning", "train"), ("dpo", "preference pairs", "align")]))
    alpaca  instruction tuning
    dpo     preference pairs
    <BLANKLINE>
    use one: kgpt2 train --config NAME [key=value ...] (dpo: kgpt2 align --config NAME)
    edit a copy: kgpt2 recipes --copy NAME [DEST]
"""

from __future__ import annotations

import re
import shlex


def counted(n: int, noun: str, plural: str = "") -> str:
    """`n` and the noun, plural unless one (`plural`: where it is not the noun + "s"): the phrase every count in
    kgpt2's output uses.

        >>> counted(1, "train article"), counted(1_003, "example"), counted(1, "batch", "batches")
        ('1 train article', '1,003 examples', '1 batch')
    """
    return f"{n:,} " + (noun if n == 1 else plural or noun + "s")


def shown(value) -> str:
    """A setting's value in a sentence about what changed: as Python writes it, "unset" for none.

        >>> shown(None), shown(8), shown("dpo")
        ('unset', '8', "'dpo'")
    """
    return "unset" if value is None else repr(value)


def short(value: float) -> str:
    """A measured value in a progress line: 4 significant digits, thousands whole (the logs and JSON keep them all).

        >>> short(4.123456), short(0.06621), short(369.0452), short(50257.8)
        ('4.123', '0.06621', '369', '50,258')
    """
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def next_commands(*commands: str) -> str:
    """What to run next, one command a line after "next: " (each pastes into a shell as it is)."""
    return "\n".join(("next: " if i == 0 else "      ") + c for i, c in enumerate(commands))


def prepare_report(manifest: dict, out) -> str:
    """`kgpt2 prepare`: articles and tokens per split, what was skipped, where the shards are."""
    lines = [f"{name:>10}: {s['num_articles']:>8,} {'article ' if s['num_articles'] == 1 else 'articles'} "
             f"{s['num_tokens']:>13,} {'token' if s['num_tokens'] == 1 else 'tokens'}"
             for name, s in manifest["splits"].items()]
    skipped = manifest["skipped"]
    if skipped["total"]:
        lines.append(f"skipped {counted(skipped['total'], 'record')}: {skipped['by_reason']}")
        lines += [f"  e.g. {example}" for example in skipped["examples"]]
    lines.append(f"shards in {out} (content hash {manifest['content_hash']})")
    return "\n".join(lines)


def plan_table(plan: list, rows, accumulation: int = 1, standing: dict | None = None) -> str:
    """`kgpt2 train --dry-run`: the plan as written, why it resolved as it did, a table of its stages and, on a run
    with checkpoints (`standing`, from `dry_run_plan`), what each stage has trained and where the next
    `kgpt2 train` resumes. A step of the table is a batch (train.max_steps counts them); with gradient accumulation
    the optimizer steps once every `accumulation` batches, so both are shown."""
    import pandas as pd  # deferred: pandas adds ~0.5 s to every `kgpt2` start

    offset, start = (standing["stage_offset"], standing["step_offset"]) if standing else (0, 0)
    batches = [r["steps"] for r in rows]
    updates = optimizer_steps(batches, start, accumulation)
    trained = _trained(rows, standing) if standing else None
    table = []
    for i, r in enumerate(rows):
        row = {"stage": r["stage"] + offset, "articles": f"{r['articles']:,}",
               "range": f"{r['first']:,}..{r['first'] + r['articles'] - 1:,}",  # as training logs it
               "tokens": f"{r['tokens']:,}"}
        row.update({"batches": f"{batches[i]:,}", "updates": f"{updates[i]:,}"} if accumulation > 1
                   else {"steps": f"{batches[i]:,}"})
        row["epochs"] = r["epochs"]
        if trained is not None:
            row["trained"] = trained[i]
        table.append(row)
    total = (f"{sum(updates):,} optimizer steps in all" if accumulation == 1 else
             f"{sum(batches):,} batches in all (train.max_steps counts batches), {sum(updates):,} optimizer steps "
             f"(updates): one every {accumulation} batches (train.gradient_accumulation_steps = {accumulation})")
    lines = [f"stage plan {plan}", f"why: {rows.why}", pd.DataFrame(table).to_string(index=False), total]
    return "\n".join(lines + ([_standing_line(rows, standing, accumulation)] if standing else []))


def optimizer_steps(batches: list[int], start: int, accumulation: int) -> list[int]:
    """The optimizer steps in each stage of `batches` batches, the run's batch count at `start` before the first:
    Keras applies the accumulated gradients at every `accumulation`-th batch of the run (its iteration count).

        >>> optimizer_steps([1, 2, 12], 0, 4), optimizer_steps([6], 9, 4), optimizer_steps([3, 5], 0, 1)
        ([0, 0, 3], [1], [3, 5])
    """
    done, out = start, []
    for n in batches:
        out.append((done + n) // accumulation - done // accumulation)
        done += n
    return out


def _resume_at(rows, standing: dict) -> tuple[int, int]:
    """(the row the next `kgpt2 train` trains in, its batches trained), or (len(rows), 0) when the plan is done;
    as the trainer resumes: the checkpoint's cursor, or a finished one-stage plan that grew trained on."""
    state, step = standing["state"], standing["state"]["step"]
    if step >= standing["step_offset"] + sum(r["steps"] for r in rows):
        return len(rows), 0
    i = state["stage"] - standing["stage_offset"]  # the stage running (after a stage end: the next one)
    if i >= len(rows):  # a finished stage whose plan grew (more epochs, a higher max_steps) trains on
        return len(rows) - 1, step - standing["step_offset"]
    return i, state["epoch"] * rows[i]["steps_per_epoch"] + state["batch"]


def _trained(rows, standing: dict) -> list[str]:
    """What each row's stage has trained: "all", a count of batches, or "0"."""
    at, done = _resume_at(rows, standing)
    return ["all" if i < at else f"{done:,}" if i == at else "0" for i in range(len(rows))]


def _standing_line(rows, standing: dict, accumulation: int) -> str:
    """Where a run with checkpoints stands in this plan, and what the next `kgpt2 train` does."""
    state = standing["state"]
    at, done = _resume_at(rows, standing)
    stopped = f", stopped at train.max_steps in stage {state['stage'] + 1}" if state.get("stopped") else ""
    head = f"run {standing['run']} is at step {state['step']:,} ({standing['checkpoint']}{stopped})"
    if at >= len(rows):
        return f"{head}, the end of this plan: `kgpt2 train` would train nothing"
    row = rows[at]
    of = row["steps_per_epoch"] * row["epochs"]
    stage = f"stage {row['stage'] + standing['stage_offset']}"
    where = f"at the start of {stage}" if done == 0 else f"in {stage}, after {done:,} of its {of:,} batches"
    # as the trainer goes: the rest of this stage and every later stage whole, stopped at the plan's step count
    # (train.epochs = 0 with a higher max_steps gives the stages more epochs than those before trained)
    ahead = of - done + sum(r["steps_per_epoch"] * r["epochs"] for r in rows[at + 1:])
    left = min(ahead, standing["step_offset"] + sum(r["steps"] for r in rows) - state["step"])
    more = (counted(left, "more step") if accumulation == 1 else
            f"{counted(left, 'more batch', 'more batches')} "
            f"({counted(optimizer_steps([left], state['step'], accumulation)[0], 'optimizer step')})")
    return f"{head}: `kgpt2 train` resumes {where} and trains {more}"


def recipe_list(listing: list[tuple[str, str, str]]) -> str:
    """`kgpt2 recipes`: one line per recipe, then how to use one (the alignment recipes run with `kgpt2 align`)."""
    width = max(len(name) for name, _, _ in listing)
    lines = [f"{name:<{width}}  {text}" for name, text, _ in listing]
    aligning = ", ".join(name for name, _, verb in listing if verb == "align")
    use = "use one: kgpt2 train --config NAME [key=value ...]"
    use += f" ({aligning}: kgpt2 align --config NAME)" if aligning else ""
    lines += ["", use, "edit a copy: kgpt2 recipes --copy NAME [DEST]"]
    return "\n".join(lines)


def train_report(result) -> str:
    """`kgpt2 train`: the steps, where the run is, what padding cost (example windows only), and what to run next."""
    start, end = result.start_step, result.global_step
    stopped = getattr(result, "stopped_in", "")
    if start == end and stopped:  # a new stage or new shards would be refused in the middle of a stage
        return (f"trained nothing: the run stopped at train.max_steps (step {end}) in {stopped}; run in "
                f"{result.run_dir} (latest {result.checkpoint}). To train the stage on, give a higher "
                "train.max_steps (or 0: the whole plan)")
    if start == end:  # its own advice (how to train on) is the next step: no "next:" lines under it
        return (f"trained nothing: the run is at step {end}, the end of its plan; run in {result.run_dir} (latest "
                f"{result.checkpoint}). To train it further, give it more to do: another pass {result.one_more_pass}, "
                + ("a higher train.max_steps, " if result.max_steps_cut else "")
                + "or new shards (docs/training.md, \"Continue a run\")")
    if start:  # a resumed or continued run: the steps of this call, and where the run began and is
        lines = [f"trained {counted(end - start, 'step')} (step {start} -> {end}); run in {result.run_dir} "
                 f"(latest {result.checkpoint})"]
    else:
        lines = [f"trained {counted(end, 'step')}; run in {result.run_dir} (latest {result.checkpoint})"]
    last = next((m for m in reversed(result.stages) if "padding" in m), None)
    if last is not None and "examples_per_window" in last:
        lines.append(f"padding: {last['padding']:.1%} of the target positions ({last['examples_per_window']:.2f} "
                     f"examples packed per window; one example per window: {last['padding_one_per_window']:.1%}), "
                     f"{counted(last['truncated'], 'example')} truncated")
    elif last is not None:
        lines.append(f"padding: {last['padding']:.1%} of the target positions (one example per window), "
                     f"{counted(last['truncated'], 'example')} truncated")
    run = shlex.quote(str(result.run_dir))
    if stopped:
        lines.append(f"stopped at train.max_steps in {stopped}: a higher train.max_steps (or 0: the whole plan) "
                     f"trains the stage on (kgpt2 train --run {run} train.max_steps=N)")
    lines.append(next_commands(f"kgpt2 evaluate --run {run}", f"kgpt2 demo --run {run}"))
    return "\n".join(lines)


def evaluate_next(run_dir) -> str:
    """`kgpt2 evaluate`'s last line: try the model."""
    run = shlex.quote(str(run_dir))
    return next_commands(f"kgpt2 demo --run {run}", f"kgpt2 generate --run {run} --prompt TEXT")


def align_report(result: dict, run_dir) -> str:
    """`kgpt2 align`: what happened to the pairs, the held-out metrics before and after, and what to run next."""
    p = result["pairs"]
    kto = result.get("loss") == "kto"
    unpaired = (f", {counted(p['unpaired'], 'unpaired example')}" if kto and p.get("unpaired") else
                f", {counted(p['unpaired_skipped'], 'unpaired vote answer')} skipped" if p.get("unpaired_skipped")
                else "")
    lines = [f"pairs: {p['read']} read, {counted(p['ties_skipped'], 'tie')} skipped, {p['identical_dropped']} with "
             f"chosen == rejected dropped{unpaired}, {p['too_long_dropped']} too long; {p['train']} train, "
             + (counted(p["heldout"], "held out example") if kto else f"{p['heldout']} held out")
             + (f" ({result['loss']})" if "loss" in result else "")]
    for when in ("before", "after"):
        m = result[f"heldout_{when}"]
        lines.append(f"held-out {when:>6}: loss {m['loss']:.4f}, reward accuracy {m['reward_accuracy']:.3f}, "
                     f"margin {m['reward_margin']:.4f}")
    lines.append(f"run in {run_dir} ({result['checkpoint']}, align.json){_align_start(result.get('start'))}")
    lines.append(next_commands(f"kgpt2 evaluate --run {shlex.quote(str(run_dir))}"))
    return "\n".join(lines)


def _align_start(start: dict | None) -> str:
    """Where alignment started (align.json `start`), as the align log's start line says it; -q hides that line.
    Empty for a run aligned before align.json recorded it."""
    if not start:
        return ""
    if "preset" in start:
        return f", started from preset {start['preset']}"
    return f", started from {start['checkpoint']} of run {start['run']}"


def quickstart_report(result: dict, evaluation_table: str) -> str:
    """`kgpt2 quickstart`: the evaluation table, a sample, what was made and what to try next."""
    run_dir = result["run_dir"]
    return "\n".join([
        "\n== evaluation on held-out articles (test split)", evaluation_table,
        "\n== greedy sample from the final checkpoint", _no_blank_runs(result["prompt"] + result["sample"]),
        f"\nmade: {run_dir}/ (tokenizer/, preset/, shards/, ckpt-*/, stage-*.weights.h5, loss.png, evaluation-test.png)",
        next_commands(f"kgpt2 demo --run {shlex.quote(str(run_dir))}",
                      f"kgpt2 generate --run {shlex.quote(str(run_dir))} --prompt 'The with statement'"),
    ])


def _no_blank_runs(text: str) -> str:
    r"""A sample as printed: a small model's greedy text often ends in dozens of newlines, pushing what follows
    off the screen; runs of blank lines become one.

    >>> _no_blank_runs("a\n\n\n\nb\n\n\n")
    'a\n\nb'
    """
    return re.sub(r"\n\s*\n(\s*\n)+", "\n\n", text).rstrip()


def tokenizer_report(tokenizer, out, asked: int = 0, min_frequency: int = 2) -> str:
    """What `kgpt2 tokenizer train` made; `asked`: the --vocab-size, said when the corpus gave fewer.

    >>> from types import SimpleNamespace as T
    >>> tokenizer_report(T(kind="bpe", vocab_size=12949, eos_id=0), "tok", asked=50000)
    'byte-level BPE tokenizer, 12,949 tokens (end-of-text id 0), saved in tok; fewer than the 50,000 asked: no other pair of tokens appears at least 2 times in the source'
    """
    kind = "character" if tokenizer.kind == "char" else "byte-level BPE"
    line = f"{kind} tokenizer, {tokenizer.vocab_size:,} tokens (end-of-text id {tokenizer.eos_id}), saved in {out}"
    if tokenizer.kind != "char" and 0 < tokenizer.vocab_size < asked:
        line += (f"; fewer than the {asked:,} asked: no other pair of tokens appears at least {min_frequency} "
                 f"time{'s' if min_frequency > 1 else ''} in the source")
    return line


def export_report(run, checkpoint: str, to: str, out) -> str:
    form = {"hf": "Hugging Face GPT-2", "preset": "KerasHub preset", "peft": "PEFT adapter"}[to]
    return f"exported {run} ({checkpoint}) as {form} to {out}"


def import_report(legacy, out) -> str:
    return f"imported {legacy} as a KerasHub preset in {out}; train on it with model.preset = \"{out}\""
