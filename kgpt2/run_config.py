"""What a run's config.json stores: paths relative to the run, and its continuations.

A run folder must open wherever it is copied (Google Drive, another
machine, another working directory), so the paths a config names are
written relative to the run folder (`model.preset = "preset"`,
`data.shards = "../../data/shards"`); their absolute form at save time is
kept beside them (`absolute_paths`) as a fallback for paths outside the
run, such as shards, when the run moved but they did not. Reading resolves
each path against where the run is now. `continuations` records every
change made to a run when it was trained further (`kgpt2 train --run`).

Works on plain dicts, so kgpt2.config can read a run's config.json
through `--config` without importing the run module.

    >>> import json, tempfile, pathlib
    >>> from kgpt2.run_config import read_run_config, write_run_config
    >>> run = pathlib.Path(tempfile.mkdtemp()) / "runs" / "r1"
    >>> (run / "preset").mkdir(parents=True)
    >>> cfg = {"run": "r1", "checkpoints_root": str(run.parent),
    ...        "model": {"preset": str(run / "preset"), "tokenizer": ""}, "data": {"shards": ""}, "train": {}}
    >>> write_run_config(run / "config.json", cfg)
    >>> json.loads((run / "config.json").read_text())["model"]["preset"]
    'preset'
    >>> moved = run.rename(run.parent / "moved")
    >>> data, continuations = read_run_config(moved / "config.json")
    >>> data["model"]["preset"] == str(moved / "preset"), data["run"], continuations
    (True, 'moved', [])
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from kgpt2.config_sections import MODEL_SHAPE_KEYS
from kgpt2.errors import UserError
from kgpt2.io import atomic_write_text

# The config keys that may name a local file or folder.
PATH_KEYS = ("model.preset", "model.tokenizer", "data.shards", "train.init_from", "align.init_run")
LIST_PATH_KEYS = ("align.data",)  # lists of local files (preference data), each stored like a PATH_KEYS value
EXTRA_KEYS = ("relative_paths", "absolute_paths", "continuations")  # in config.json, not in Config


def _get(data: dict, key: str):
    section, name = key.split(".")
    return (data.get(section) or {}).get(name, "")


def _set(data: dict, key: str, value) -> None:
    section, name = key.split(".")
    data.setdefault(section, {})[name] = value


def split_checkpoint(value: str) -> tuple[str, str]:
    """train.init_from = "RUN_DIR[:CHECKPOINT]" -> (RUN_DIR, ":CHECKPOINT" or "")."""
    head, sep, tail = value.rpartition(":")
    if sep and head and "/" not in tail and "\\" not in tail and not Path(value).exists():
        return head, ":" + tail
    return value, ""


def write_run_config(path, data: dict, continuation: dict | None = None) -> None:
    """Write `data` (Config.to_dict()) as the run's config.json, local paths relative to the run folder.

    Continuations already recorded there are kept; `continuation` is appended.
    """
    path = Path(path)
    run_dir = path.parent.resolve()
    data = json.loads(json.dumps(data))  # a deep copy
    relative, absolute = [], {}
    for key in PATH_KEYS:
        value, checkpoint = split_checkpoint(str(_get(data, key) or ""))
        if not value or not Path(value).expanduser().exists():
            continue  # empty, or a hub preset name
        full = Path(value).expanduser().resolve()
        _set(data, key, Path(os.path.relpath(full, run_dir)).as_posix() + checkpoint)
        relative.append(key)
        absolute[key] = str(full) + checkpoint
    for key in LIST_PATH_KEYS:
        values = _get(data, key)
        local = [Path(str(v)).expanduser().exists() for v in values] if isinstance(values, list) else []
        if not any(local):
            continue
        full = [str(Path(str(v)).expanduser().resolve()) if here else v for v, here in zip(values, local)]
        _set(data, key, [Path(os.path.relpath(f, run_dir)).as_posix() if here else f for f, here in zip(full, local)])
        relative.append(key)
        absolute[key] = full
    old = read_continuations(path)
    data.update(relative_paths=relative, absolute_paths=absolute,
                continuations=old + ([continuation] if continuation else []))
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def read_continuations(path) -> list:
    try:
        return list(json.loads(Path(path).read_text()).get("continuations", []))
    except (OSError, ValueError, AttributeError):
        return []


def model_kind(config: dict) -> str | None:
    """What a folder's config.json describes when it is a model's, not a run's (None for a run's).

        >>> model_kind({"module": "keras_hub.src.models.gpt2.gpt2_backbone", "class_name": "GPT2Backbone"})
        'a KerasHub preset'
        >>> model_kind({"model_type": "gpt2"}), model_kind({"model": {}, "train": {}})
        ('a Hugging Face model', None)
    """
    if "model" in config:
        return None
    if "class_name" in config or "module" in config:
        return "a KerasHub preset"
    return "a Hugging Face model" if "model_type" in config else None


def read_run_config(path) -> tuple[dict, list]:
    """(config dict with paths resolved against where the run is now, its continuations)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"run config '{path}' cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"run config '{path}' is not a kgpt2 run config (a JSON object)")
    if {"splits", "content_hash"} <= data.keys():  # a shard set's manifest: its keys read as unknown config keys
        raise UserError(f"'{path}' is the manifest of a shard set (what `kgpt2 prepare` writes), not a run config; "
                        f"train on the set with data.shards = \"{path.parent}\"")
    kind = model_kind(data)
    if kind:
        raise UserError(f"'{path.parent}' holds {kind}, not a kgpt2 run; --run takes a run's folder "
                        f"(train one on this model with model.preset = \"{path.parent}\")")
    run_dir = _readable(path.parent)
    absolute = data.pop("absolute_paths", {}) or {}
    for key in data.pop("relative_paths", []) or []:
        if key in LIST_PATH_KEYS:
            _set(data, key, _resolve_list(run_dir, _get(data, key), absolute.get(key)))
            continue
        value, checkpoint = split_checkpoint(str(_get(data, key)))
        here = Path(os.path.normpath(run_dir / value))
        if not here.exists() and key in absolute and Path(split_checkpoint(absolute[key])[0]).exists():
            _set(data, key, absolute[key])  # the run moved, the folder it names did not
        else:
            _set(data, key, str(here) + checkpoint)
    continuations = data.pop("continuations", []) or []
    # The run may have been moved or reached through another root.
    data["checkpoints_root"], data["run"] = str(run_dir.parent), run_dir.name
    return data, continuations


def _readable(folder: Path) -> Path:
    """`folder` absolute: as named unless that holds a "..", which every message would show ("run in
    /a/third/../moved/run"); resolved then (by the OS, not normpath: a link before the ".." stays right)."""
    folder = folder.absolute()
    return folder.resolve() if ".." in folder.parts else folder


def _resolve_list(run_dir: Path, values, absolute) -> list:
    """Each item of a LIST_PATH_KEYS value against the run's place now, or where it was if only that exists."""
    values = values if isinstance(values, list) else []
    absolute = absolute if isinstance(absolute, list) and len(absolute) == len(values) else values
    out = []
    for value, before in zip(values, absolute):
        here = Path(os.path.normpath(run_dir / str(value)))
        out.append(str(before) if not here.exists() and Path(str(before)).exists() else str(here))
    return out


def flat(data: dict, prefix: str = "") -> dict:
    """{"train.stages": [...], ...} from a nested config dict."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def continuation_record(old: dict, new: dict, step: int) -> dict | None:
    """What changed between two config dicts (run location aside), or None."""
    before, after = flat(old), flat(new)
    for values in (before, after):  # the same folder, named from another working directory
        for key in PATH_KEYS:
            path, checkpoint = split_checkpoint(str(values.get(key) or ""))
            if path and Path(path).exists():
                values[key] = str(Path(path).resolve()) + checkpoint
    skip = {"run", "checkpoints_root", *EXTRA_KEYS}
    if "scratch" not in (before.get("model.preset"), after.get("model.preset")):
        # A preset's shape is read from it, never set (a change is refused); older runs recorded the defaults there.
        skip |= {f"model.{k}" for k in MODEL_SHAPE_KEYS}
    changed = {k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after))
               if k not in skip and before.get(k) != after.get(k)}
    if not changed:
        return None
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "step": step, "changed": changed}
