"""What a run may resume or continue from: its checkpoint checked against the config, and where the plan goes.

`kgpt2 train` on a run that has checkpoints resumes it, or (with another
plan: more stages, more epochs, new shards) continues it (kgpt2.train). What
the checkpoints depend on (model shape, tokenizer, LoRA, batch size) may not
change, nor what orders an epoch's batches (seed, data.shift_windows) in the
middle of one; `place_plan` decides whether the new plan's stages run in place (the
same stages so far) or after the finished ones, numbered on from them (saying
which trained articles they see again; refused when they see nothing new), and
`plan_left` whether a finished run has anything left to train (more epochs
reopen a finished one-stage run).
`train.init_from` starts a new run from another run's checkpoint instead
(`init_checkpoint`: the same model and the same tokenizer).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
from pathlib import Path

from kgpt2.config import NOT_IN_WEIGHTS, SIGNATURE_KEYS, Config, ModelConfig
from kgpt2.data.stage_plan import StagePlan
from kgpt2.errors import UserError
from kgpt2.model.models import load_tokenizer, named_tokenizer
from kgpt2.model.preset_shape import preset_shape
from kgpt2.reports import shown
from kgpt2.run import Run
from kgpt2.run_config import flat, split_checkpoint
from kgpt2.training.checkpoints import Checkpoint

log = logging.getLogger("kgpt2")

# The model signature's keys that are there only while what they set is on (Config.model_signature).
OFF_WHEN_ABSENT = {"pad_vocabulary_to", "lora_rank", "lora_targets", "use_rslora", "use_dora", "quantize"}

# The shape keys of a from-scratch model's signature (Config.model_signature).
SCRATCH_SHAPE = ("num_layers", "num_heads", "hidden_dim", "vocabulary_size")

# What orders a stage's batches besides its plan (kgpt2.training.training_data.stage_batches): the seed permutes
# each epoch's windows, data.shift_windows moves their starts. data.windows is checked on its own (check_resumable).
ORDER_KEYS = ("seed", "data.shift_windows")
ORDER_WHY = "which windows an epoch's batches hold and in what order"

# What a run that cannot go on as asked can do instead (`kgpt2 train --run` takes no new name itself).
NEW_RUN = "start a new run from its weights instead (run=NEW_NAME train.init_from='{run}')"


def place_plan(state: dict, stages: StagePlan, plan_spec, shards_hash: str, run_path,
               stage_ends: list[dict] = ()) -> tuple[int, int, StagePlan]:
    """(stage_offset, step_offset, stages): this plan in place on the checkpoint `state`, or after its finished stages.

    `plan_spec` is the config's train.stages, `shards_hash` its shards' content hash; `stage_ends` the states of
    the run's stage-end checkpoints, to refuse a plan the run finished before and went on from.
    """
    stage_offset, step_offset = state.get("stage_offset", 0), state.get("step_offset", 0)
    old_ends, ends = state.get("stage_ends"), [s.end for s in stages]
    same_shards = state.get("shards") == shards_hash
    done = state["stage"] - stage_offset + (0 if state.get("stage_end") else 1)  # plan stages begun
    if same_shards and (old_ends is None or old_ends[:done] == ends[:done]):
        pass  # the same stages so far: epochs, max_steps or stages after them may change
    elif same_shards and state.get("stages") == plan_spec:
        # the config is unchanged, yet the plan resolves otherwise (an older kgpt2 scaled it differently)
        raise UserError(f"cannot resume run '{run_path}': its stages ended at articles {old_ends}, "
                        f"this plan at {ends}; {NEW_RUN.format(run=run_path)}")
    elif not state.get("stage_end") and not same_shards:  # re-prepared in place, or another set named
        raise UserError(f"run '{run_path}' stopped in the middle of stage {state['stage'] + 1} on other articles than "
                        f"data.shards holds now (the set was prepared again, or another one is named): finish the "
                        f"stage on the shards it was trained on (data.shards=THEM), then continue on these; or "
                        f"{NEW_RUN.format(run=run_path)}")
    elif not state.get("stage_end"):
        raise UserError(f"cannot change the stages of run '{run_path}' in the middle of stage {state['stage'] + 1}: "
                        f"resume it with its own train.stages to the stage end first, then continue")
    else:  # new shards, or another plan: its stages run after the finished ones
        refuse_moved_stages(state, plan_spec, ends, done, same_shards, run_path)
        refuse_a_plan_trained_before(stage_ends, plan_spec, shards_hash, len(stages), state, run_path)
        if same_shards:
            refuse_a_shorter_plan(state, plan_spec, ends, run_path)
        stage_offset, step_offset = state["stage"], state["step"]
        if not same_shards:  # also a set prepared again at the same path, which no config change shows
            log.warning("data.shards holds other articles than run %s trained on so far: this plan's stages run "
                        "after its %d finished ones, on them", run_path, stage_offset)
        note_trained_again([*stage_ends, state], shards_hash, plan_spec, ends, stage_offset, run_path)
    if stage_offset:
        stages = StagePlan([dataclasses.replace(s, index=s.index + stage_offset) for s in stages], stages.why)
    return stage_offset, step_offset, stages


def refuse_moved_stages(state: dict, plan_spec, ends: list[int], done: int, same_shards: bool, run_path) -> None:
    """The run's plan with stages added (10, then 10,000 added, as the seed project grew its plan) that no longer
    fits as written is scaled as a whole (train.oversize = "scale"): the stages trained would end elsewhere, and
    the whole plan would train again as new stages, from article 0. Refused, saying what fits."""
    old_spec, old_ends = state.get("stages"), state.get("stage_ends")
    if not (same_shards and state.get("stage_end") and isinstance(old_spec, list) and old_ends
            and len(plan_spec) > done and plan_spec[:done] == old_spec[:done]):
        return
    fits = json.dumps([*plan_spec[:done], "rest"])
    raise UserError(f"run '{run_path}' trained stages 1-{done} of train.stages = {json.dumps(plan_spec[:done])} "
                    f"(articles 0..{old_ends[done - 1] - 1:,}); {json.dumps(plan_spec)} does not fit the train split "
                    f"as written, and scaled to it those stages would end at articles {ends[:done]}, not "
                    f"{old_ends[:done]}, and train again as new stages: give the stages after article "
                    f"{old_ends[done - 1] - 1:,} as counts that fit, or \"rest\" (e.g. 'train.stages={fits}')")


def refuse_a_plan_trained_before(stage_ends: list[dict], plan_spec, shards_hash: str, plan_length: int, state: dict,
                                 run_path) -> None:
    """A plan the run finished on these very shards, before it went on (new shards, new stages), is refused: a
    notebook run again from its top cell, or the first command typed again, would otherwise train those articles
    a second time as new stages, hours of a GPU for a model that has seen them. Another plan on them is a
    deliberate second pass and goes on (`train.stages=["rest"]`)."""
    for old in stage_ends:
        offset = old.get("stage_offset", 0)
        if (old.get("shards") == shards_hash and old.get("stages") == plan_spec
                and old["stage"] - offset == plan_length and old["step"] < state["step"]):
            path = shlex.quote(str(run_path))
            raise UserError(f"run '{run_path}' trained this plan on these articles already (train.stages = "
                            f"{json.dumps(plan_spec)}: stages {offset + 1}-{old['stage']}, to step {old['step']:,}) "
                            f"and has gone on since, to step {state['step']:,}; it would train them again as new "
                            f"stages. To go on with the run as it stands: kgpt2 train --run {path}; to train these "
                            "articles again on purpose, give another plan, e.g. 'train.stages=[\"rest\"]'")


def trained_end(state: dict) -> int:
    """The article up to which (exclusive) the plan of a stage-end checkpoint's `state` trained its shards; 0
    where unknown (mid-stage, or an older kgpt2 that kept no stage ends)."""
    ends, done = state.get("stage_ends"), state.get("stage", 0) - state.get("stage_offset", 0)
    return ends[done - 1] if state.get("stage_end") and ends and 0 < done <= len(ends) else 0


def refuse_a_shorter_plan(state: dict, plan_spec, ends: list[int], run_path) -> None:
    """A plan that ends before the articles the run has trained on these shards in place ([10, 40] after
    [10, 40, 100]) has nothing new: it would train what the run has seen again, as new stages, where the same
    plan given at its stage 2 end trains nothing. A plan cut short by mistake, refused; a second pass reaches
    the trained end ('train.stages=["rest"]'), and one on shards the run left and came back to trains."""
    trained = trained_end(state)
    if not ends or ends[-1] >= trained:
        return
    path = shlex.quote(str(run_path))
    raise UserError(f"run '{run_path}' has trained articles 0..{trained - 1:,} of these shards (train.stages = "
                    f"{json.dumps(state.get('stages'))}), and train.stages = {json.dumps(plan_spec)} ends at article "
                    f"{ends[-1] - 1:,}: it would train nothing new, only those again as new stages; to go on as the "
                    f"run stands: kgpt2 train --run {path}; for a pass over all the articles: "
                    f"'train.stages=[\"rest\"]' train.epochs=1; or train this plan in a new run from its weights "
                    f"(run=NEW_NAME train.init_from={path})")


def note_trained_again(states: list[dict], shards_hash: str, plan_spec, ends: list[int], stage_offset: int,
                       run_path) -> None:
    """One line naming the articles a plan placed after the finished stages trains again: those the run's
    stage ends on these shards reached (another plan on them, or a second pass)."""
    trained = max((trained_end(s) for s in states if s.get("shards") == shards_hash), default=0)
    again = min(trained, ends[-1]) if ends else 0
    if again <= 0:
        return
    firsts = [0, *ends[:-1]]
    last = stage_offset + sum(1 for first in firsts if first < again)
    where = f"stage {last} trains" if last == stage_offset + 1 else f"stages {stage_offset + 1}-{last} train"
    log.warning("train.stages = %s runs after the %d finished stages of run %s, and its %s articles 0..%s "
                "again, which the run has trained already", json.dumps(plan_spec), stage_offset, run_path, where,
                f"{again - 1:,}")


def plan_left(state: dict, stages: StagePlan, stage_offset: int, total_steps: int, epochs: int, run_path,
              changed: dict | None = None) -> str:
    """What this plan leaves to train on the run at checkpoint `state` (of `total_steps`, train.epochs `epochs`).

    `changed`: {key: [old, new]} of this call's settings against the run's (run_config.continuation_record);
    the refusal's command repeats them, so a user who pasted it keeps every override they gave.

    "train": a new run, one in a stage, or one with stages left; "nothing": a finished run whose plan did not
    grow; "reopen": a finished one-stage run whose plan grew (train.epochs, train.max_steps) trains its stage on.
    A run of several finished stages whose plan grew is refused: more epochs for its last stage alone would
    leave the earlier ones with fewer.
    """
    if not state.get("stage_end") or state["stage"] - stage_offset < len(stages):
        return "train"
    if total_steps <= state["step"]:
        log.info("run %s has trained its plan to step %d: nothing more to train", run_path, state["step"])
        return "nothing"
    if len(stages) > 1:
        path = Path(run_path)
        raise UserError(f"run '{path}' has finished its {len(stages)} stages, and only a run of one stage takes "
                        f"more train.epochs (the earlier stages would keep fewer); for one more pass over its "
                        f"articles, give it a new stage: kgpt2 train --run {shlex.quote(str(path))} "
                        "'train.stages=[\"rest\"]' train.epochs=1; or train every stage "
                        f"{epochs} epochs in a new run from its weights: "
                        f"kgpt2 train --config {shlex.quote(str(path / 'config.json'))} "
                        f"run={shlex.quote(path.name + '-more')} train.init_from={shlex.quote(str(path))} "
                        f"train.epochs={epochs}{_overrides(changed or {})}")
    return "reopen"


def _overrides(changed: dict) -> str:
    """ key=value ... for the command line (TOML values, shell-quoted), train.epochs and init_from left to the caller."""
    skip = {"train.epochs", "train.init_from"}
    return "".join(" " + shlex.quote(f"{key}={json.dumps(new)}") for key, (_, new) in changed.items()
                   if key not in skip and new is not None)


def differences(old: dict, new: dict) -> str:
    """What differs between two model signatures, by config key; a key a signature leaves out is "off" (a LoRA,
    padding or quantisation setting, there only when that is on) or "unset".

    >>> differences({"lora": False, "sequence_length": 32}, {"lora": True, "lora_rank": 8, "sequence_length": 32})
    'lora.enabled: False -> True; lora.rank: off -> 8'
    """
    def value(signature: dict, k: str) -> str:
        return ("off" if k in OFF_WHEN_ABSENT else "unset") if k not in signature else shown(signature[k])

    return "; ".join(f"{SIGNATURE_KEYS.get(k, k)}: {value(old, k)} -> {value(new, k)}"
                     for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))


def check_resumable(state: dict, cfg: Config) -> None:
    """What a run's checkpoints depend on may not change when it resumes or continues; the message names the field
    (its tokenizer: `run.check_trained_tokenizer`, in train's input checks)."""
    old = dict(state.get("signature", {}))
    if _same_preset_path(old.get("preset"), cfg):  # written as the working directory saw it, by an older kgpt2
        old["preset"] = cfg.model_signature()["preset"]
    diffs = differences(old, cfg.model_signature())
    if diffs:
        raise UserError(f"cannot resume run '{cfg.run_dir}': the config changed what its checkpoints hold ({diffs}); "
                        "train a new run with them instead (run=NEW_NAME)")
    windows = state.get("windows", cfg.data.windows)  # the batches a checkpoint's cursor counts
    if windows != cfg.data.windows and not state.get("stage_end"):
        raise UserError(f"cannot change data.windows of run '{cfg.run_dir}' in the middle of stage {state['stage'] + 1} "
                        f"({shown(windows)} -> {shown(cfg.data.windows)}): resume it with data.windows={windows} to "
                        "the stage end first, then continue")
    if not state.get("stage_end"):
        check_batch_order(order_changes(cfg), cfg.run_dir, state["stage"], state.get("epoch", 0), state.get("batch", 0))
    if state.get("batch_size") != cfg.train.batch_size:
        raise UserError(f"cannot resume run '{cfg.run_dir}': the training plan changed (train.batch_size: "
                        f"{shown(state.get('batch_size'))} -> {cfg.train.batch_size!r}); "
                        f"{NEW_RUN.format(run=cfg.run_dir)}")


def order_changes(cfg: Config) -> dict:
    """{key: [old, new]} of the ORDER_KEYS this config changes against the run's config.json, which holds the
    settings its newest checkpoint trained with (a change in the middle of an epoch is refused before it is
    recorded)."""
    run = Run(cfg.run_dir)
    if not run.exists():
        return {}
    before, after = flat(run.config().to_dict()), flat(cfg.to_dict())
    return {k: [before.get(k), after.get(k)] for k in ORDER_KEYS if before.get(k) != after.get(k)}


def check_batch_order(changed: dict, run_path, stage: int, epoch: int, batch: int) -> None:
    """A change of what orders a stage's batches (`changed`: {key: [old, new]}) where training goes on at batch
    `batch` of epoch `epoch`: the rest of that epoch would come in another order, training some windows twice
    and others never. At an epoch's start (batch 0) the next epoch is a whole permutation of its own: taken."""
    keys = [k for k in ORDER_KEYS if k in changed]
    if not keys or not batch:
        return
    what, they, them = (keys[0], "it sets", "it") if len(keys) == 1 else (" and ".join(keys), "they set", "them")
    values = "; ".join(f"{k} {shown(changed[k][0])} -> {shown(changed[k][1])}" for k in keys)
    keep = " ".join(shlex.quote(f"{k}={json.dumps(changed[k][0])}") for k in keys)
    raise UserError(f"cannot change {what} of run '{run_path}' in the middle of epoch {epoch + 1} of stage "
                    f"{stage + 1} ({values}): {they} {ORDER_WHY}, so the rest of the epoch would train some windows "
                    f"twice and others never; resume it with {keep} to the stage end first, then change {them}")


def _same_preset_path(old, cfg: Config) -> bool:
    return bool(old) and Path(old).is_dir() and Path(old).resolve() == Path(cfg.model.preset).resolve()


def init_checkpoint(cfg: Config, tokenizer=None) -> Checkpoint | None:
    """`train.init_from = "RUN_DIR[:CHECKPOINT]"`: that checkpoint, checked against this config's model
    (`tokenizer`: this config's, whose size a from-scratch model.vocabulary_size = 0 takes)."""
    if not cfg.train.init_from:
        return None
    run_dir, checkpoint = split_checkpoint(cfg.train.init_from)
    source = Run(run_dir)
    if not source.exists():
        raise UserError(f"train.init_from: '{run_dir}' is not a kgpt2 run directory (no config.json)")
    ckpt = source.start_checkpoint(checkpoint.lstrip(":") or "latest", "train.init_from checkpoint")  # weights only
    old, new = ckpt.state.get("signature", {}), cfg.model_signature(weights_only=True)
    old = {k: v for k, v in old.items() if k not in NOT_IN_WEIGHTS}
    if cfg.model.preset == "scratch" and not old.keys() & set(SCRATCH_SHAPE):
        old, new = _scratch_shapes(source, old, new, tokenizer)
    diffs = differences(old, new)
    if diffs:
        raise UserError(f"train.init_from: run '{run_dir}' holds another model than this config ({diffs})")
    if tokenizer is not None:
        _check_init_tokenizer(source, ckpt.state, run_dir, cfg.model, tokenizer)
    return ckpt


def _check_init_tokenizer(source: Run, state: dict, run_dir: str, model: ModelConfig, tokenizer) -> None:
    """A source run trained with another tokenizer of the same size (a BPE of `kgpt2 tokenizer train` and GPT-2's)
    passes the shape check, and this run would start with embeddings that stand for other tokens. The hash its
    checkpoints record, else (an align run's) the one its config names."""
    theirs = source.config().model
    old = state.get("tokenizer") or _tokenizer_hash(theirs)
    if old is None or old == tokenizer.hash:
        return
    # The run's own copy, not the run folder: a local model.tokenizer folder is copied into the new run whole.
    own = next((d for d in (source.tokenizer_dir, source.preset_dir / "assets" / "tokenizer") if d.is_dir()), None)
    use = (f"model.tokenizer={shlex.quote(str(own))}" if own is not None
           else f"model.tokenizer='' with model.preset={shlex.quote(theirs.preset)}")
    raise UserError(f"train.init_from: run '{run_dir}' was trained with another tokenizer ({named_tokenizer(theirs)}, hash "
                    f"{old}) than this config's ({named_tokenizer(model)}, hash {tokenizer.hash}), so its embeddings would "
                    f"stand for other tokens; train with its tokenizer ({use}) on shards prepared with it, or leave "
                    "train.init_from out")


def _tokenizer_hash(model: ModelConfig) -> str | None:
    """The hash of the tokenizer a config names; None where it cannot be read (a hub preset offline)."""
    try:
        return load_tokenizer(model).hash
    except UserError:
        return None


def _scratch_shapes(source: Run, old: dict, new: dict, tokenizer) -> tuple[dict, dict]:
    """A from-scratch source run signed its checkpoints with its own preset's path, not a shape (a scratch model
    becomes `<run>/preset` before its first checkpoint): its shape is that preset's, compared with the one this
    config asks for; unknown (a hub preset not at hand), the restore's own name and shape check decides."""
    if not new.get("vocabulary_size") and tokenizer is not None:  # 0: the tokenizer's size, as scratch_shape takes it
        new = {**new, "vocabulary_size": tokenizer.vocab_size}
    shape = preset_shape(source.config().model)
    if shape is None:
        return old, {k: v for k, v in new.items() if k not in SCRATCH_SHAPE}
    return {**old, **{k: shape[k] for k in SCRATCH_SHAPE}}, new


def check_epochs(epochs: int, state: dict, stage_offset: int, plan_length: int, run_path) -> None:
    """A train.epochs below what the stage in place has trained (in the middle of it, or a plan all trained) would
    train nothing, and, once in config.json, would be the epochs of every stage the run is given later."""
    if stage_offset != state.get("stage_offset", 0):
        return  # this plan's stages run after the finished ones, with these epochs: nothing is cut short
    if epochs == 0:
        return  # as many epochs as train.max_steps needs (check_max_steps checks that one)
    stage = state["stage"] + (0 if state.get("stage_end") else 1)
    if not state.get("stage_end"):
        trained = state.get("epoch", 0) + (1 if state.get("batch") else 0)
        where = f"is in epoch {trained} of stage {stage}"
    elif state["stage"] - stage_offset >= plan_length:  # a plan all trained; before that, later stages may be shorter
        trained = state.get("epochs", 0)
        where = f"trained stage {stage} for {trained} epochs"
    else:
        return
    if epochs < trained:
        more = (f"of {trained} or more" if not state.get("stage_end")
                else f"above {trained} (train.epochs={trained + 1}: one more pass)" if plan_length == 1
                else f"of {trained} (fewer apply to a new stage: 'train.stages=[\"rest\"]' train.epochs={epochs})")
        raise UserError(f"train.epochs is {epochs}, but run '{run_path}' {where} already: nothing would train; "
                        f"give train.epochs {more}")


def placed_plan(state: dict, cfg: Config, stages: StagePlan, shards_hash: str, run_path,
                stage_ends: list[dict] = ()) -> tuple[int, int, StagePlan]:
    """`place_plan`, then `check_epochs` on where it put the plan: what the trainer and `--dry-run` both check
    of a config's plan against the run's newest checkpoint (and its stage ends: `place_plan`)."""
    stage_offset, step_offset, placed = place_plan(state, stages, cfg.train.stages, shards_hash, run_path, stage_ends)
    check_epochs(cfg.train.epochs, state, stage_offset, len(placed), run_path)
    return stage_offset, step_offset, placed


def check_max_steps(cfg: Config, step: int, run_path) -> None:
    """A train.max_steps below the step a run has reached would train nothing, and, once in its config.json,
    keep it from training on whatever else it is given."""
    if 0 < cfg.train.max_steps < step:
        raise UserError(f"train.max_steps is {cfg.train.max_steps:,}, but run '{run_path}' is at step {step:,} "
                        f"already: nothing would train; give a train.max_steps above {step:,} (or 0: the whole plan)")
