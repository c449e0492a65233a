"""The demo's loaded models: any checkpoint of any run under a root, within a memory budget.

Runs whose base is the same (preset, shape, LoRA setting, precision) share
one built model; each checkpoint of them is a list of weight values for that
model (LoRA adapters or full weights restored once, then kept), so switching
between `base`, stage ends and other runs' checkpoints costs nothing after
the first use. Different bases stay built side by side. When the estimated
bytes (models plus kept weight lists) pass the budget, the least recently
used weight lists go first, then the least recently used models.

Each checkpoint in use gets its own `kgpt2.generation.engine.Engine` (made on first
use, dropped with its weights) whose slots decode that checkpoint's requests
together; the engines of one base share the built model and its compiled
programs (`Engine.sibling`), and read their checkpoint's values, not the
model's variables, so nothing is swapped between launches.

Names come from the browser: a run or checkpoint is used only if it appears
in the listing of the root or of that run, never joined as a path. A
checkpoint may be named as on the command line (`latest`, `stage-2`, `best`,
a step): `resolve` turns the name into its id with the run's own resolver.
The listing holds the checkpoints whose weights verify, as generate, serve and
export take them (a damaged optimizer state matters only to a resume); one
whose weights are damaged is named in one warning line, once, not at every refresh.

    >>> from kgpt2.serving.model_pool import ModelPool
    >>> pool = ModelPool("checkpoints")
    >>> # weights = pool.get("quickstart", "base"); weights.engine, weights.values, weights.info
"""

from __future__ import annotations

import gc
import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

from kgpt2.errors import UserError
from kgpt2.generate import Generator
from kgpt2.generation.engine import Engine
from kgpt2.run import (
    BASE,
    Run,
    build_run_model,
    folder_fingerprint,
    is_run,
    list_runs,
    load_run_config,
    restore,
    snapshot,
)
from kgpt2.serving.checkpoint_names import picker_choices, preset_name
from kgpt2.training.checkpoints import SKIPPED, WEIGHTS_ONLY, Checkpoint, CheckpointManager, warn_damaged

log = logging.getLogger("kgpt2")

DEFAULT_BUDGET = 4 * 2**30  # bytes of weights kept loaded (models and checkpoints)
# The names the CLI takes for a checkpoint (Run.checkpoint resolves them); anything else from a browser is refused
# before it reaches the store, which would look a name up as a folder.
CHECKPOINT_NAME = re.compile(r"latest|best|stage-\d+|(ckpt-)?\d+")


def model_key(cfg) -> str:
    """What decides the built base: runs with equal keys share one model."""
    model = asdict(cfg.model)
    for name in ("preset", "tokenizer"):  # each run holds its own copy of a local preset: compare contents
        if model[name] and Path(model[name]).is_dir():
            model[name] = folder_fingerprint(model[name])
    key = {"model": model, "lora": asdict(cfg.lora), "precision": cfg.train.precision}
    if cfg.model.preset == "scratch":  # random weights: each run has its own base
        key["run"] = str(Path(cfg.checkpoints_root) / cfg.run)
    return json.dumps(key, sort_keys=True)


def local_folders(cfg) -> list[Path]:
    """The run's preset and tokenizer where they are folders (what `model_key` reads the files of)."""
    return [Path(p) for p in (cfg.model.preset, cfg.model.tokenizer) if p and Path(p).is_dir()]


def files_state(paths) -> tuple:
    """(path, size, mtime_ns) of each file at or under `paths`: a stat of each, nothing read."""
    state = []
    for path in map(Path, paths):
        for f in sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]:
            try:
                st = f.stat()
                state.append((str(f), st.st_size, st.st_mtime_ns))
            except OSError:
                state.append((str(f), None, None))
    return tuple(state)


def _nbytes(values) -> int:
    """Bytes of arrays or variables of any backend (an estimate for the budget)."""
    import numpy as np
    from keras import backend

    total = 0
    for v in values:
        dtype = backend.standardize_dtype(v.dtype)
        total += int(np.prod(v.shape)) * (2 if dtype in ("bfloat16", "float16") else np.dtype(dtype).itemsize)
    return total


@dataclass
class Weights:
    """One checkpoint, ready to decode: its engine (its values on the shared model) and its values."""

    key: str  # "<run>/<checkpoint>", what a vote records
    engine: Engine
    generator: Generator  # the shared model's one-request front, for beam search (reads the variables)
    values: list
    context: int  # the model's context in tokens
    info: str  # one line: preset, parameters, LoRA or full, precision, backend, stage and step


@dataclass
class _Base:
    model: object
    generator: Generator
    programs: Engine  # compiles the programs the checkpoints' engines share; decodes nothing itself
    snapshot: list  # checkpoint variables as built, to restore `base`
    nbytes: int
    weights: OrderedDict  # weights id -> values, least recently used first
    engines: dict  # weights id -> its Engine, made on first use, dropped with the weights


class ModelPool:
    def __init__(self, checkpoints_root, budget_bytes: int = DEFAULT_BUDGET, slots: int = 8):
        self.root = Path(checkpoints_root)
        self.budget = budget_bytes
        self.slots = slots  # requests one checkpoint's engine decodes together
        self.lock = threading.RLock()  # builds and restores touch a model's variables
        self.builds = 0  # models built (tests check that switching does not rebuild)
        self.loads = 0  # checkpoints restored into a value list
        self.evictions = 0
        self._bases: OrderedDict[str, _Base] = OrderedDict()
        self._keys: dict = {}  # run folder -> (files_state, its config, its model_key)
        self._stores: dict = {}  # run folder -> its CheckpointManager (its verdicts kept: manifests read once)
        self._named: set = set()  # (folder, why) of each damaged checkpoint already named in a warning

    # --- names ---
    def runs(self) -> list[str]:
        return list_runs(self.root)

    def run_dir(self, name) -> Path:
        """The folder of run `name`: a plain name of a run directly under the root (never '..' or a path).

        Asked on every request, so it checks that one folder, not the whole root.
        """
        if isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name \
                and is_run(self.root / name):
            return self.root / name
        runs = self.runs()
        if not name:  # an empty picker: the page's refresh found no run under the root
            raise UserError("no run is picked" + (f"; pick one of: {', '.join(runs)}" if runs else
                            ": the checkpoints root has no runs now (moved or removed?); put one back, then refresh"))
        raise UserError(f"there is no run '{name}' under the checkpoints root (runs: {', '.join(runs) or 'none'})")

    def checkpoints(self, run) -> list[tuple[str, str]]:
        """(label, id) pairs for a picker: base, then each checkpoint with its step and stage (checkpoint_names)."""
        return picker_choices(self.intact(self.run_dir(run)))

    def intact(self, run_dir: Path) -> list[Checkpoint]:
        """The run's checkpoints whose weights verify, oldest first: what `kgpt2 generate` takes (`latest` is the
        newest of them). Each damaged one is named in one warning line the first time it is seen."""
        good, damaged = self._stores.setdefault(run_dir, CheckpointManager(run_dir)).sorted_out(WEIGHTS_ONLY)
        new = [(step, path, why) for step, path, why in damaged if (path, why) not in self._named]
        self._named.update((path, why) for _, path, why in new)
        warn_damaged(new, SKIPPED)
        return good

    def resolve(self, run, checkpoint) -> tuple[Path, str]:
        """The run's folder and the id of `checkpoint`, named as the CLI names it: `base`, an id (`ckpt-120`),
        a step (`120`), `stage-2` (that stage's end), `latest` (the newest whose weights verify) or `best`."""
        run_dir = self.run_dir(run)
        ids = [BASE] + [c.id for c in self.intact(run_dir)]
        name = checkpoint
        if name == "latest":  # from the listing just made: the store's own would name a damaged one again
            name = ids[-1] if len(ids) > 1 else name
        elif isinstance(name, str) and name not in ids and CHECKPOINT_NAME.fullmatch(name):
            try:
                name = Run(run_dir).checkpoint(name, WEIGHTS_ONLY).id
            except UserError:  # its sentence names the run's folder; the browser gets the run's name
                pass
        if not isinstance(name, str) or name not in ids:  # intact ones only: a damaged id is listed by the store
            raise UserError(f"run '{run}' has no checkpoint '{checkpoint}' (it has: {', '.join(ids)}; or latest, "
                            "stage-N, best)")
        return run_dir, name

    # --- loading ---
    def get(self, run, checkpoint) -> Weights:
        """The weights of `checkpoint` of `run`, built / restored on first use."""
        run_dir, checkpoint = self.resolve(run, checkpoint)
        cfg, key = self.config_and_key(run_dir)
        with self.lock:
            base = self._base(key, cfg, run_dir)
            wid = BASE if checkpoint == BASE else str(run_dir / checkpoint)
            if wid not in base.weights:
                base.weights[wid] = self._restore_values(base, run_dir, checkpoint)
                self.loads += 1
            base.weights.move_to_end(wid)
            values = base.weights[wid]
            if wid not in base.engines:
                base.engines[wid] = base.programs.sibling(lambda values=values: values)
            engine = base.engines[wid]
            self._evict(keep=(key, wid))
        return Weights(f"{run}/{checkpoint}", engine, base.generator, values, engine.max_sequence_length,
                       describe(cfg, base.model, run_dir, checkpoint))

    def config_and_key(self, run_dir: Path):
        """The run's config and `model_key`, read again only when its config.json or a file of its local
        preset or tokenizer changed size or mtime (a preset is not fingerprinted at every request)."""
        config_path = Run(run_dir).config_path
        cached = self._keys.get(run_dir)
        if cached is not None and cached[0] == files_state([config_path, *local_folders(cached[1])]):
            return cached[1], cached[2]
        state = files_state([config_path])  # taken before reading: a change after it is seen next time
        cfg = load_run_config(run_dir)
        state += files_state(local_folders(cfg))
        key = model_key(cfg)
        self._keys[run_dir] = (state, cfg, key)
        return cfg, key

    def info(self, run, checkpoint) -> str:
        """The model information line of a pick (loads it: a pick is usually generated with next)."""
        return self.get(run, checkpoint).info

    def _base(self, key, cfg, run_dir) -> _Base:
        if key in self._bases:
            self._bases.move_to_end(key)
            return self._bases[key]
        model, tokenizer = build_run_model(cfg)
        self.builds += 1
        log.info("demo: built the base model of run %s (preset %s)", run_dir.name, cfg.model.preset)
        programs = Engine(model, tokenizer, slots=self.slots)
        base = _Base(model, Generator(model, tokenizer), programs, snapshot(model), 0, OrderedDict(), {})
        base.nbytes = _nbytes(model.variables)
        self._bases[key] = base
        return base

    @staticmethod
    def _restore_values(base: _Base, run_dir: Path, checkpoint: str) -> list:
        """The model's variable values with `checkpoint` in them, as arrays no later restore changes.

        JAX arrays are immutable (an assign makes a new one), so the values a
        restore did not touch (a LoRA run's frozen base) stay shared between
        the lists; other backends' variables change in place and are copied.
        """
        import keras
        from keras import ops

        try:
            restore(base.model, run_dir, checkpoint, base=base.snapshot)
        except FileNotFoundError:  # checked whole, then removed before its weights were read: nothing assigned yet
            raise UserError(f"checkpoint {checkpoint} of run '{run_dir.name}' was removed while it was loaded (a "
                            "training run keeps only its newest checkpoints); pick another") from None
        if keras.backend.backend() == "jax":
            return [v.value for v in base.model.variables]
        return [ops.copy(v.value) for v in base.model.variables]

    def nbytes(self) -> int:
        """Estimated bytes held: each model's variables, each distinct array of its weight lists and
        each checkpoint engine's key/value cache."""
        total = 0
        for b in self._bases.values():
            held = {id(v.value) for v in b.model.variables}
            extra = {id(x): x for values in b.weights.values() for x in values if id(x) not in held}
            total += b.nbytes + _nbytes(extra.values()) + sum(e.cache_bytes for e in b.engines.values())
        return total

    def _evict(self, keep: tuple[str, str]) -> None:
        """Drop least recently used weight lists, then models, until within budget (never `keep`)."""
        while self.nbytes() > self.budget:
            victim = next(((k, w) for k, b in self._bases.items() for w in b.weights if (k, w) != keep), None)
            if victim is not None:  # a request still running on its engine keeps its values until it ends
                del self._bases[victim[0]].weights[victim[1]]
                self._bases[victim[0]].engines.pop(victim[1], None)
            else:
                old = next((k for k in self._bases if k != keep[0]), None)
                if old is None:
                    return  # one model with one checkpoint: over budget, but it is what was asked for
                del self._bases[old]
            self.evictions += 1
            gc.collect()


def describe(cfg, model, run_dir: Path, checkpoint: str) -> str:
    """Preset · parameters · LoRA or full · precision · backend · stage and step."""
    import keras

    preset = preset_name(cfg.model.preset, run_dir)  # a copied preset's folder is just "preset"
    params = model.count_params()
    size = f"{params / 1e6:.1f}M" if params >= 1e5 else f"{params / 1e3:.0f}K"
    tuning = f"LoRA r={cfg.lora.rank}" if cfg.lora.enabled else "full weights"
    where = "untrained preset"
    if checkpoint != BASE:
        ckpt = CheckpointManager(run_dir).get(checkpoint)
        stage = ckpt.stage_number
        where = (f"stage {stage}, " if stage is not None else "") + f"step {ckpt.step}"
    return (f"{preset} · {size} parameters · {tuning} · {model.dtype_policy.name} · "
            f"{keras.backend.backend()} · {where}")
