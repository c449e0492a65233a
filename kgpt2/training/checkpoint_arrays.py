"""A checkpoint's arrays: the model's and optimizer's variables in .npz files, stored by name.

`checkpoint_variables` says what of a model a checkpoint holds (trainable
variables and RNG states); `array_names` gives each a stable name (its path;
optimizer variables without the optimizer's own name, which changes between
builds); `save_arrays` writes them and `load_arrays` assigns them back only
once every name and shape matches, so a model is never half-restored.

    >>> import keras
    >>> from kgpt2.training.checkpoint_arrays import array_names
    >>> layer = keras.layers.Dense(2, name="head")
    >>> layer.build((None, 3))
    >>> array_names(layer.weights)
    ['head/kernel', 'head/bias']
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from kgpt2.errors import UserError
from kgpt2.training.checkpoint_manifest import OPTIMIZER
from kgpt2.training.distribution import host_array

log = logging.getLogger("kgpt2")
SEEDS = "seed_generator/"  # the names `array_names` gives RNG states


def checkpoint_variables(model) -> list:
    """What a checkpoint holds of the model: trainable variables and RNG states."""
    trainable = list(model.trainable_variables)
    seeds = [v for v in model.non_trainable_variables if "seed_generator" in v.path]
    return trainable + seeds


def array_names(variables, optimizer: bool = False) -> list[str]:
    """Stable names for `variables`: their paths.

    Optimizer variables keep only their last part: the parts before are the
    optimizers' own names (`adam_w_1` in a second build; TensorFlow nests a
    wrapped optimizer's as `loss_scale_optimizer/adam_w_3/`); RNG states are numbered in order (their generators'
    names carry a per-process counter). A repeated name gets `#n`.
    """
    names, seen, seeds = [], {}, 0
    for v in variables:
        path = getattr(v, "path", "") or ""
        if "seed_generator" in path:
            name, seeds = f"{SEEDS}{seeds}", seeds + 1
        elif optimizer:
            name = path.rsplit("/", 1)[-1]
        else:
            name = path
        count = seen.get(name, 0)
        seen[name] = count + 1
        names.append(name if count == 0 else f"{name}#{count}")
    return names


def save_arrays(path: Path, variables) -> None:
    """Write `variables` to the .npz file `path` under their `array_names`, fsynced."""
    names = array_names(variables, optimizer=path.name == OPTIMIZER)
    values = [host_array(v) for v in variables]  # a multi-host run gathers sharded variables
    arrays = {n: np.asarray(v) for n, v in zip(names, values)}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


def load_arrays(path: Path, variables, what: str) -> None:
    """Assign the arrays of the .npz file `path` to `variables` by name (by position in format 1), every
    name and shape checked first: a mismatch is one UserError and leaves no variable changed."""
    where = path.parent.name
    with np.load(path) as data:
        keys = list(data.files)
        if keys and all(k.startswith("v") and k[1:].isdigit() for k in keys):  # format 1: by position
            names, keys = array_names(variables, optimizer=path.name == OPTIMIZER), sorted(keys)
            if len(keys) != len(variables):
                raise UserError(f"checkpoint {where} holds {len(keys)} {what} variables but the model has "
                                f"{len(variables)}: it was written by a different model or LoRA setting")
            by_name = dict(zip(names, keys))
        else:
            names = array_names(variables, optimizer=path.name == OPTIMIZER)
            missing, unexpected = [n for n in names if n not in keys], [k for k in keys if k not in set(names)]
            if [n for n in missing + unexpected if not n.startswith(SEEDS)]:
                raise UserError(f"checkpoint {where} does not match the model's {what} variables "
                                f"(missing: {_few(missing)}; unexpected: {_few(unexpected)}): it was written by "
                                "a different model or LoRA setting")
            _say_fresh_seeds(where, names, keys)
            by_name = {n: n for n in names if n in keys}
        values = {}
        for name, var in zip(names, variables):
            if name not in by_name:  # an RNG state the checkpoint has not: the one train's seed gave it
                continue
            value = data[by_name[name]]
            if tuple(value.shape) != tuple(var.shape):
                raise UserError(f"checkpoint {where}: {what} variable {name} has shape "
                                f"{tuple(value.shape)} there but {tuple(var.shape)} in the model")
            values[name] = value
    for name, var in zip(names, variables):  # all checked first: never a half-restored model
        if name in values:
            var.assign(values[name])


def _say_fresh_seeds(where: str, names: list[str], keys: list[str]) -> None:
    """RNG states come and go with dropout (model.dropout or lora.dropout set to or from 0): they are not weights,
    so such a checkpoint still loads; the line says the dropout masks start afresh."""
    held, wanted = (sum(n.startswith(SEEDS) for n in group) for group in (keys, names))
    if held != wanted:
        log.info("checkpoint %s holds %d random-number states, the model %d (its dropout changed): dropout draws "
                 "new masks from the run's seed", where, held, wanted)


def _few(names: list[str]) -> str:
    return (", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")) or "none"
