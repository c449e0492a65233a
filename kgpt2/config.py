"""Run configuration: plain dataclasses, read from TOML, overridable as `key=value`.

A run config names the model, the prepared shards, the stage plan and the
optimiser. Every field has a default that works, so a config file only says
what differs. Sections map to the dataclasses of `kgpt2.config_sections`
(re-exported here); `Config` joins them and checks the rules that span two;
overrides use dotted keys (`train.batch_size=4`, `lora.rank=16`, `run=my-run`).

    >>> from kgpt2.config import load_config
    >>> cfg = load_config(None, ["run=demo", "train.batch_size=4"])
    >>> cfg.train.batch_size, cfg.run_dir.name
    (4, 'demo')

Every value is checked when the config is read, one sentence per mistake:

    >>> load_config(None, ["train.oversize=scal"])
    Traceback (most recent call last):
    kgpt2.errors.UserError: train.oversize must be one of "reject", "scale"; got "scal"
    >>> load_config(None, ["train.batchsize=4"])
    Traceback (most recent call last):
    kgpt2.errors.UserError: unknown config key 'train.batchsize'; did you mean 'train.batch_size'?
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kgpt2 import recipes

# The sections are re-exported: callers import them from kgpt2.config.
from kgpt2.config_sections import (  # noqa: F401
    ALL_LINEAR,
    LORA_TARGETS,
    MODEL_SHAPE_KEYS,
    AlignConfig,
    DataConfig,
    GenerateConfig,
    LoraConfig,
    ModelConfig,
    TrainConfig,
    section_type_hints,
    show_value,
)
from kgpt2.errors import UserError
from kgpt2.run_config import flat, read_run_config, write_run_config

# Signature fields a run's weights do not depend on: the preset's name or path (a run's own copy of a preset is
# the same weights under another path) and the training sequence length (the positions are the preset's).
NOT_IN_WEIGHTS = ("preset", "sequence_length")

# model_signature's keys as the config keys a user sets (messages name these); add one with each new key.
SIGNATURE_KEYS = {"preset": "model.preset", "sequence_length": "data.sequence_length", "lora": "lora.enabled",
                  "pad_vocabulary_to": "model.pad_vocabulary_to", "lora_rank": "lora.rank", "lora_targets": "lora.targets",
                  "use_rslora": "lora.use_rslora", "use_dora": "lora.use_dora", "quantize": "model.quantize",
                  "num_layers": "model.num_layers", "num_heads": "model.num_heads", "hidden_dim": "model.hidden_dim",
                  "vocabulary_size": "model.vocabulary_size"}


@dataclass
class Config:
    run: str = "run"
    checkpoints_root: str = "checkpoints"
    seed: int = 1337
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    # The dotted keys the user gave (a TOML file, key=value; not a run's config.json, which records every key):
    # set by load_config, None for a Config built in Python. Not a setting: not in to_dict, the hash or ==.
    typed_keys: frozenset | None = field(default=None, compare=False, repr=False, metadata={"internal": True})

    def __post_init__(self):
        """Rules that join two sections: checked here, once."""
        if not self.run.strip():
            raise UserError("run must name the run folder; got \"\"")
        if self.model.quantize and not self.lora.enabled:
            raise UserError(f"model.quantize = {show_value(self.model.quantize)} freezes the base model; "
                            "set lora.enabled = true to train adapters on it, or model.quantize = \"\"")

    @property
    def run_dir(self) -> Path:
        return Path(self.checkpoints_root) / self.run

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        del data["typed_keys"]
        return data

    def model_signature(self, weights_only: bool = False) -> dict:
        """The fields a checkpoint depends on: changing them breaks resume.

        `weights_only`: without NOT_IN_WEIGHTS, what another run's checkpoint must match to start
        this one (`train.init_from`).
        """
        if weights_only:
            return {k: v for k, v in self.model_signature().items() if k not in NOT_IN_WEIGHTS}
        m, lora = self.model, self.lora
        sig = {
            "preset": self._preset_in_run(),
            "sequence_length": self.data.sequence_length,
            "lora": lora.enabled,
        }
        if m.pad_vocabulary_to > 1:  # checkpoints hold the padded embedding
            sig["pad_vocabulary_to"] = m.pad_vocabulary_to
        if m.preset == "scratch":
            sig.update(
                num_layers=m.num_layers,
                num_heads=m.num_heads,
                hidden_dim=m.hidden_dim,
                vocabulary_size=m.vocabulary_size,
            )
        if lora.enabled:
            sig.update(lora_rank=lora.rank, lora_targets=sorted(lora.targets))
            sig.update({k: True for k in ("use_rslora", "use_dora") if getattr(lora, k)})
        if m.quantize:  # adapters are trained against the quantised base
            sig["quantize"] = m.quantize
        return sig

    def _preset_in_run(self) -> str:
        """The preset as the run names it: relative to the run folder when inside it, so a moved run resumes."""
        try:
            return Path(self.model.preset).resolve().relative_to(self.run_dir.resolve()).as_posix()
        except (ValueError, OSError):
            return self.model.preset

    def hash(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _build(cls, values: dict, where: str):
    """Make dataclass `cls` from a TOML table, refusing unknown keys."""
    if not isinstance(values, dict):
        raise UserError(f"'{where}' must be a table of settings, not {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in values.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean '{where + '.' if where else ''}{close[0]}'?" if close else \
                f"known here: {', '.join(sorted(fields))}"
            raise UserError(f"unknown config key '{name}'; {hint}")
        default = fields[key].default_factory() if fields[key].default is dataclasses.MISSING else fields[key].default
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value, name)
        else:
            value = value if _literal_bool(cls, key, value) else _coerce(value, default, name)
        kwargs[key] = value
    return cls(**kwargs)


def _literal_bool(cls, key, value) -> bool:
    """A true/false for a key whose allowed values include booleans (train.fused_loss: "auto", true, false)."""
    hint = section_type_hints(cls).get(key)
    return isinstance(value, bool) and typing.get_origin(hint) is typing.Literal and value in typing.get_args(hint)


def _coerce(value, default, name):
    """Check a value against its default's type; ints may stand for floats."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        value = [value] if isinstance(value, str) else value  # one item may stand for a list (align.data=votes.jsonl)
        ok = isinstance(value, list)
    else:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # a count may stand for a string (train.devices = 2)
        ok = isinstance(value, str)
    if not ok:
        raise UserError(
            f"config key '{name}' should be {type(default).__name__}, got {value!r}"
        )
    return value


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    try:  # TOML syntax for the value (numbers, booleans, lists, quoted strings)
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as e:
        if raw.strip()[:1] in ("[", "{", '"', "'"):  # meant as a list, table or quoted string, but broken
            what = {"[": "list", "{": "table"}.get(raw.strip()[:1], "quoted string")
            reason = str(e).split(" (at ")[0]
            example = {"list": '[10, 1000, "rest"]' if key.strip() == "train.stages" else '["a", "b"]',
                       "table": '{a = 1}'}.get(what, '"text"')
            raise UserError(f"override '{text}': the value is not a valid TOML {what} ({reason}); write it whole and "
                            f"quote it for the shell, e.g. {key.strip()}='{example}'") from None
        value = raw  # a bare word is a string
    return key.strip().split("."), value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a TOML run config, a run's config.json, a recipe by name (`pubmed_lora`) or the defaults,
    then apply `key=value` overrides. `typed_keys` records the keys the TOML file and the overrides set:

        >>> sorted(load_config(None, ["model.num_layers=12", "lora={rank=4}"]).typed_keys)
        ['lora.rank', 'model.num_layers']
    """
    data, recorded = _read_config(path)
    typed = set() if recorded else set(flat(data))  # a run's config.json holds every key: none typed by the user
    for text in overrides:
        keys, value = _parse_override(text)
        table = data
        for k in keys[:-1]:
            table = table.setdefault(k, {})
            if not isinstance(table, dict):
                raise UserError(f"override '{text}': '{k}' is not a section")
        table[keys[-1]] = value
        typed |= set(flat({".".join(keys): value}))
    cfg = _build(Config, _under_init_run(data), "")  # what align.init_run brings is not typed either
    cfg.typed_keys = frozenset(typed)
    return cfg


def _read_config(path: str | Path | None) -> tuple[dict, bool]:
    """(the settings `path` holds, whether they are a run's recorded config.json); ({}, False) for None."""
    if path is not None and Path(path).suffix == ".json" and Path(path).is_file():
        return read_run_config(path)[0], True  # a run's own config: paths resolved against where it is now
    if path is None:
        return {}, False
    path = Path(path)
    if path.is_dir() and str(path) not in recipes.names():  # a run named like a recipe keeps resuming by --config
        if (path / "config.json").is_file():
            read_run_config(path / "config.json")  # a model's folder (Hugging Face, KerasHub) is named as one
            raise UserError(f"--config '{path}' is a run's folder; to resume that run use --run '{path}', to "
                            f"start a new one from its settings --config '{path / 'config.json'}'")
        raise UserError(f"--config '{path}' is a folder; give a TOML config file, a run's config.json or a "
                        "recipe's name (kgpt2 recipes)")
    if not path.is_file() and recipes.is_name(str(path)):
        path = recipes.find(str(path))  # a bare name that is no file here: kgpt2/recipes/NAME.toml
    if not path.is_file():
        raise UserError(f"config file '{path}' does not exist" + _recipe_hint(path))
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")), False
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file '{path}' is not valid TOML: {e}") from None


def _under_init_run(data: dict) -> dict:
    """`align.init_run = RUN`: RUN's [model], [lora] and data.sequence_length (from its config.json) under what
    `data` sets itself, so aligning a run needs none of them repeated (a mismatch left is refused by align)."""
    align = data.get("align")
    run_dir = align.get("init_run") if isinstance(align, dict) else None
    if not isinstance(run_dir, str) or not (Path(run_dir) / "config.json").is_file():
        return data  # not set, or no run there (yet): align names it when it starts
    theirs = read_run_config(Path(run_dir) / "config.json")[0]
    data = dict(data)
    for section, inherited in (("model", theirs.get("model") or {}),
                               ("lora", {k: v for k, v in (theirs.get("lora") or {}).items() if k != "init_from"}),
                               ("data", {"sequence_length": (theirs.get("data") or {}).get("sequence_length")})):
        own = data.get(section, {})
        if isinstance(own, dict):  # anything else is refused by _build in one sentence
            data[section] = {k: v for k, v in inherited.items() if v is not None} | own
    return data


def _recipe_hint(path: Path) -> str:
    """For a path such as configs/pubmed_lora.toml (recipes used to live there)."""
    name = path.name.removesuffix(".toml")
    return f"; kgpt2 ships a recipe '{name}': --config {name}" if name in recipes.names() else ""


def config_from_dict(data: dict) -> Config:
    return _build(Config, data, "")


def save_config(cfg: Config, path: Path, continuation: dict | None = None) -> None:
    """Write the resolved config as JSON (what the run actually used), paths relative to the run
    (kgpt2.run_config); `continuation` is added to the run's list of changes."""
    write_run_config(path, cfg.to_dict(), continuation)
