"""A run folder: every file name in it, and reading a run back.

`train` writes a run, evaluation, generation, export and the demo read it;
all of them ask a `Run` for paths instead of spelling file names:

    config.json                the resolved config the run trained with
    ckpt-<step>/               checkpoints (kgpt2.training.checkpoints)
    <stage>.weights.h5         each stage's merged weights
    logs/steps.csv             one row per step (kgpt2.training.run_logs)
    logs/evals.csv, best.json  periodic evaluation and the best checkpoint (kgpt2.training.periodic_eval)
    logs/tensorboard/          the step rows for TensorBoard
    stages.csv, stages.json    validation after each stage
    loss.png, eval_loss.png    plots
    evaluation-<split>.*       `kgpt2 evaluate` tables and plot
    votes.jsonl, align.json    demo votes (kgpt2.serving.votes) and the DPO result (kgpt2.align)
    preset/                    a from-scratch run's own base model (kgpt2.pretrain)
    preset/, tokenizer/        a local base model / tokenizer from outside the run, copied in (`Run.adopt`)
    .lock                      held by the one `train` / `align` process writing the run (kgpt2.lock)

`latest` is the newest checkpoint that verifies: a damaged one is skipped with
one warning line naming the one used (kgpt2.training.checkpoints). Readers that
load only the weights (`Run.restore`: generate, serve, export) check only the
weights; training resumes from the newest whose optimizer state verifies too.

A run is self-contained and relocatable: config.json names paths relative
to the run folder (kgpt2.run_config), and a local preset or tokenizer that
lives outside the run is copied in when training starts, so a run copied or
moved anywhere opens from any working directory. Named hub presets
(`gpt2_base_en`) stay names. Shards stay outside: they are found relative
to the run, or where they were, or given with `--shards`.

    >>> import tempfile
    >>> from kgpt2.run import Run, list_runs
    >>> run = Run(tempfile.mkdtemp())
    >>> run.steps_log.relative_to(run.path).as_posix(), run.stage_export("stage-2").name
    ('logs/steps.csv', 'stage-2.weights.h5')
    >>> run.exists(), list_runs(run.path), run.best()
    (False, [], None)
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from kgpt2.config import Config, config_from_dict, save_config
from kgpt2.errors import UserError, os_error_sentence
from kgpt2.io import atomic_write_text, publish_folder
from kgpt2.lock import RunLock
from kgpt2.model.models import build_causal_lm, load_tokenizer, named_tokenizer
from kgpt2.run_config import model_kind, read_continuations, read_run_config
from kgpt2.training.checkpoints import WEIGHTS_ONLY, Checkpoint, CheckpointManager, checkpoint_variables
from kgpt2.training.devices import dtype_policy, resolve_device

BASE = "base"  # checkpoint id meaning "the preset, untrained"
BEST = "best"  # checkpoint id meaning "lowest validation loss" (train.keep_best)
CHECKPOINT_HINT = "--checkpoint {name} picks this checkpoint"  # for the verbs that take --checkpoint


def not_a_run(path, advice: str, checkpoint_hint: str = CHECKPOINT_HINT,
              root_hint: str = "", option: str = "--run") -> UserError:
    """The sentence for a --run that is no run folder; a file or folder in one names the run, a folder of runs
    names them. `checkpoint_hint` (formatted with the run and the checkpoint's name) and `root_hint` (with the
    folder) say what the verb takes instead (an empty `checkpoint_hint`: the verb takes no checkpoint, e.g.
    `pretrain summary`); `option` is what was given the folder (`align.init_run`).

        >>> str(not_a_run("nowhere", "train one first"))
        "'nowhere' is not a kgpt2 run directory (no config.json); train one first"
    """
    path = Path(path)
    if path.is_file():
        folder = path.parent if (path.parent / "config.json").is_file() else None
        return UserError(f"'{path}' is a file; {option} takes the run's folder"
                         + (f" ('{folder}')" if folder is not None else ""))
    if path.is_dir() and is_run(path.parent):  # a checkpoint, the shards or logs of a run
        pick = (", and " + checkpoint_hint.format(run=path.parent, name=path.name)
                if path.name.startswith("ckpt-") and checkpoint_hint else "")
        return UserError(f"'{path}' is a folder inside run '{path.parent}'; {option} takes the run's folder{pick}")
    runs = sorted(d for d in path.iterdir() if d.is_dir() and is_run(d)) if path.is_dir() else []
    if runs:  # a checkpoints root
        names = ", ".join(d.name for d in runs[:5]) + (", ..." if len(runs) > 5 else "")
        return UserError(f"'{path}' holds runs ({names}); {option} takes one of them, e.g. {option}{' ' if option.startswith('-') else '='}'{runs[0]}'"
                         + root_hint.format(path=path))
    if (path / "manifest.json").is_file():
        return UserError(f"'{path}' is a shard set (what `kgpt2 prepare` writes), not a run; {option} takes a run's "
                         f"folder (train one on these shards with data.shards = \"{path}\")")
    return UserError(f"'{path}' is not a kgpt2 run directory (no config.json); {advice}")


class Run:
    """One run folder (`cfg.run_dir`): its file names, checkpoints and config."""

    def __init__(self, path):
        self.path = Path(path)

    @classmethod
    def of(cls, cfg: Config) -> Run:
        return cls(cfg.run_dir)

    # -- file names -------------------------------------------------------
    config_path = property(lambda self: self.path / "config.json")
    logs_dir = property(lambda self: self.path / "logs")
    steps_log = property(lambda self: self.logs_dir / "steps.csv")
    evals_log = property(lambda self: self.logs_dir / "evals.csv")
    tensorboard_dir = property(lambda self: self.logs_dir / "tensorboard")
    best_path = property(lambda self: self.path / "best.json")
    stages_csv = property(lambda self: self.path / "stages.csv")
    stages_json = property(lambda self: self.path / "stages.json")
    loss_plot = property(lambda self: self.path / "loss.png")
    eval_plot = property(lambda self: self.path / "eval_loss.png")
    votes_path = property(lambda self: self.path / "votes.jsonl")
    align_result = property(lambda self: self.path / "align.json")
    preset_dir = property(lambda self: self.path / "preset")
    tokenizer_dir = property(lambda self: self.path / "tokenizer")

    def stage_export(self, stage_name: str) -> Path:
        return self.path / f"{stage_name}.weights.h5"

    def evaluation_table(self, split: str, suffix: str) -> Path:
        """evaluation-<split>.json / .csv / .png."""
        return self.path / f"evaluation-{split}.{suffix}"

    def evaluation_tables(self, suffix: str) -> list[Path]:
        return sorted(self.path.glob(f"evaluation-*.{suffix}"))

    def exists(self) -> bool:
        return self.config_path.is_file()

    # -- the lock: one writing process per run ------------------------------
    def lock(self) -> RunLock:
        """The run's lock (`with run.lock():`); a second holder gets a UserError naming the first."""
        return RunLock(self.path)

    # -- config -----------------------------------------------------------
    def config(self, checkpoint_hint: str = CHECKPOINT_HINT) -> Config:
        """The config the run trained with, pointed at where the run is now (`checkpoint_hint`: see `not_a_run`)."""
        if not self.exists():
            raise not_a_run(self.path, "train one first", checkpoint_hint)
        return config_from_dict(read_run_config(self.config_path)[0])

    def continuations(self) -> list:
        """The changes made each time the run was trained further (config.json `continuations`)."""
        return read_continuations(self.config_path)

    def save_config(self, cfg: Config, continuation: dict | None = None) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config_path, continuation)

    def adopt(self, cfg: Config, copy: bool = True) -> Config:
        """`cfg` with a local preset and tokenizer from outside the run copied into it.

        The whole preset is copied, weights included: a LoRA run's checkpoints
        hold only the adapters, so the base weights are part of the run. A
        copy (not a link) so that rewriting the original never changes the run.
        `copy=False` (a dry run) writes nothing: only a copy already in the run is taken.
        """
        model = cfg.model
        if model.preset != "scratch" and Path(model.preset).expanduser().is_dir():
            preset = Path(model.preset).expanduser()
            if is_run(preset):  # every checkpoint of it would be copied in, then fail to load as a preset
                raise UserError(f"model.preset '{preset}' is a kgpt2 run, not a preset: to start from its weights, "
                                f"give train.init_from={preset} with the model.preset that run has")
            model = replace(model, preset=self._copy_in(preset, self.preset_dir, copy))
        if model.tokenizer and Path(model.tokenizer).expanduser().is_dir():
            tokenizer = self._copy_in(Path(model.tokenizer).expanduser(), self.tokenizer_dir, copy)
            model = replace(model, tokenizer=tokenizer)
        return replace(cfg, model=model)

    def _copy_in(self, source: Path, target: Path, copy: bool = True) -> str:
        """`target` once it holds a copy of `source` (made now if absent, or replaced where the run has no
        checkpoint yet: a start stopped before its first one, given another preset now); `source` where the run's
        checkpoints were trained on another copy (which check_resumable then names)."""
        if source.resolve() == target.resolve() or self.path.resolve() in source.resolve().parents:
            return str(source)
        if target.exists() and same_files(source, target):
            return str(target)
        if not copy or (target.exists() and any(self.path.glob("ckpt-*"))):
            return str(source)
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=self.path)) / "copy"
        try:
            shutil.copytree(source, tmp)
            publish_folder(tmp, target)
        except OSError as e:  # shutil.Error included: its list of (src, dst, why) becomes one sentence
            raise UserError(os_error_sentence(e, f"copying '{source}' into run '{self.path}'")) from None
        finally:
            shutil.rmtree(tmp.parent, ignore_errors=True)
        return str(target)

    # -- checkpoints ------------------------------------------------------
    def checkpoints(self, keep_last: int = 3) -> CheckpointManager:
        """The checkpoint store; retention spares the best checkpoint."""
        return CheckpointManager(self.path, keep_last, protected=lambda: [self.best_id()] if self.best_id() else [])

    def is_align(self) -> bool:
        """Whether `kgpt2 align` wrote this run (its newest checkpoint's state says so). Read from the listing,
        unverified: the kind needs no checksums, and `latest()` would name a damaged newest checkpoint a second
        time ("using ckpt-N instead") before the verb names it itself."""
        listed = self.checkpoints().list()
        return bool(listed) and listed[-1].state.get("kind") == "align"

    def best(self) -> dict | None:
        """best.json: {"id", "step", "val_loss", "train_loss"}, or None."""
        try:
            best = json.loads(self.best_path.read_text()) if self.best_path.is_file() else None
        except (OSError, json.JSONDecodeError):
            return None
        return best if isinstance(best, dict) else None

    def best_id(self) -> str | None:
        return (self.best() or {}).get("id") or None

    def write_best(self, record: dict) -> None:
        atomic_write_text(self.best_path, json.dumps(record, indent=2))

    def checkpoint(self, checkpoint_id: str = "latest", only: tuple[str, ...] | None = None) -> Checkpoint:
        """A checkpoint by id (`ckpt-120`, `120`, `stage-2`, `latest`, `best`); `only`: `latest` is the newest
        intact in these files (`WEIGHTS_ONLY` for a reader that loads no optimizer state)."""
        store = self.checkpoints()
        if checkpoint_id == BEST:
            best = self.best_id()
            if best is None or best not in {c.id for c in store.list()}:
                raise UserError(f"run '{self.path}' has no best checkpoint; train it with "
                                "train.keep_best = true and train.eval_every > 0")
            checkpoint_id = best
        return store.get(checkpoint_id, only)

    def start_checkpoint(self, checkpoint_id: str, option: str) -> Checkpoint:
        """The checkpoint another run starts from (`train.init_from`, `align.init_checkpoint`, named by `option`):
        only its weights are read, so only they must verify (`latest`: the newest whose weights do), and one named
        whose weights are damaged is refused now, before the new run is made."""
        ckpt = self.checkpoint(checkpoint_id, WEIGHTS_ONLY)
        why = self.checkpoints().damage(ckpt, WEIGHTS_ONLY)
        if why is not None:
            raise UserError(f"checkpoint '{ckpt.path}' is damaged ({why}); choose another {option}")
        return ckpt

    def checkpoint_ids(self) -> list[str]:
        """Intact checkpoint ids, oldest first, after `base`."""
        return [BASE] + [c.id for c in self.checkpoints().intact()]

    # -- the model --------------------------------------------------------
    def restore(self, model, checkpoint: str = "latest", base: list | None = None) -> str:
        """Put checkpoint `checkpoint` into `model`; return its id.

        `base` (a `snapshot` of the freshly built model) lets `checkpoint="base"`
        undo an earlier restore on the same model. Only the weights are loaded, so only they must verify:
        a checkpoint whose optimizer state is damaged is still used (training cannot resume from it).
        """
        if checkpoint == BASE:
            for var, value in zip(checkpoint_variables(model), base or []):
                var.assign(value)
            return BASE
        ckpt = self.checkpoint(checkpoint, WEIGHTS_ONLY)
        CheckpointManager.restore(model, ckpt, only=WEIGHTS_ONLY)
        return ckpt.id

    def load_model(self, checkpoint: str = "latest", policy: str | None = None):
        """(model, tokenizer, cfg) at a checkpoint (`base` = untrained); `policy`: a Keras dtype
        policy to build it in instead of the training one (e.g. "bfloat16" for generation)."""
        cfg = self.config()
        model, tokenizer = build_run_model(cfg, policy)
        self.restore(model, checkpoint)
        return model, tokenizer, cfg


def same_files(a, b) -> bool:
    """Two folders with the same files, byte for byte (e.g. a preset and the copy `Run.adopt` made of it)."""
    return folder_fingerprint(a) == folder_fingerprint(b)


def folder_fingerprint(folder) -> str:
    """SHA-256 over a folder's file names and contents; cached per (file, size, mtime), so a
    500 MB preset is read once per process, not at every call."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        st = p.stat()
        digest.update(p.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(_file_digest(str(p), st.st_size, st.st_mtime_ns).encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def build_run_model(cfg: Config, policy: str | None = None):
    """The run's base model (preset + LoRA layers, untrained) and tokenizer."""
    # Inference runs in the policy training used on this device, or fp32 on CPU.
    with dtype_policy(policy or resolve_device("auto").policy(cfg.train.precision)):
        model, tokenizer = build_causal_lm(cfg), load_tokenizer(cfg.model)
    check_trained_tokenizer(cfg, tokenizer)
    return model, tokenizer


def check_trained_tokenizer(cfg: Config, tokenizer) -> None:
    """Refuse a tokenizer other than the one the run's checkpoints record: its files changed since (a merges.txt cut
    short by a copy, a vocabulary replaced), and prompts would become other tokens than the model learnt, without
    a word."""
    recorded = next((c.state["tokenizer"] for c in reversed(CheckpointManager(cfg.run_dir).list())
                     if c.state.get("tokenizer")), None)  # older kgpt2 recorded none
    if recorded is not None and recorded != tokenizer.hash:
        raise UserError(f"run '{cfg.run_dir}' was trained with another tokenizer (hash {recorded}) than "
                        f"{named_tokenizer(cfg.model)} (hash {tokenizer.hash}): its files changed since, or another "
                        "one is named; use the files the run was trained with")


def snapshot(model) -> list:
    """The values a checkpoint would overwrite, to go back to `base` later."""
    return [np.array(v) for v in checkpoint_variables(model)]


def list_runs(checkpoints_root) -> list[str]:
    """Names of the runs under a checkpoints root."""
    root = Path(checkpoints_root)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if is_run(d))


def is_run(folder: Path) -> bool:
    """A run's folder: a config.json that is not a model's (a preset or Hugging Face folder beside the runs)."""
    if not Run(folder).exists():
        return False
    try:
        return model_kind(json.loads((folder / "config.json").read_text(encoding="utf-8"))) is None
    except (OSError, ValueError, TypeError):
        return True  # unreadable: a run, and opening it says what is wrong


# The functions callers used before `Run`: each is one call on it.
def load_run_config(run_dir, checkpoint_hint: str = CHECKPOINT_HINT) -> Config:
    return Run(run_dir).config(checkpoint_hint)


def list_checkpoints(run_dir) -> list[str]:
    return Run(run_dir).checkpoint_ids()


def restore(model, run_dir, checkpoint: str = "latest", base: list | None = None) -> str:
    return Run(run_dir).restore(model, checkpoint, base)


def load_model(run_dir, checkpoint: str = "latest", policy: str | None = None):
    return Run(run_dir).load_model(checkpoint, policy)
