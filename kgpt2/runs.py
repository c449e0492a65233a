"""A run directory, read back: its config, its model at a checkpoint, its siblings.

Evaluation, generation and the demo all start here. A run is a directory
under a checkpoints root holding `config.json` (written by `train`) and
`ckpt-<step>/` directories.

    >>> from kgpt2.runs import list_runs
    >>> # list_runs("checkpoints")            -> ["quickstart", ...]
    >>> # model, tokenizer, cfg = load_model("checkpoints/quickstart", "stage-2")
"""

from __future__ import annotations

import json
from pathlib import Path

from kgpt2.checkpoints import CheckpointManager
from kgpt2.config import Config, config_from_dict
from kgpt2.errors import UserError

BASE = "base"  # checkpoint id meaning "the preset, untrained"


def load_run_config(run_dir) -> Config:
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise UserError(f"'{run_dir}' is not a kgpt2 run directory (no config.json); train one first")
    cfg = config_from_dict(json.loads(path.read_text()))
    # The run may have been moved or reached through another root.
    cfg.checkpoints_root, cfg.run = str(run_dir.parent), run_dir.name
    return cfg


def list_runs(checkpoints_root) -> list[str]:
    root = Path(checkpoints_root)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if (d / "config.json").is_file())


def list_checkpoints(run_dir) -> list[str]:
    """Checkpoint ids of a run, oldest first, after `base`."""
    return [BASE] + [c.id for c in CheckpointManager(run_dir).list()]


def build_run_model(cfg: Config):
    """The run's base model (preset + LoRA layers, untrained) and tokenizer."""
    from kgpt2.devices import dtype_policy, resolve_device
    from kgpt2.models import build_causal_lm, load_tokenizer

    # Inference runs in the policy training used on this device, or fp32 on CPU.
    with dtype_policy(resolve_device("auto").policy(cfg.train.precision)):
        return build_causal_lm(cfg), load_tokenizer(cfg.model)


def snapshot(model) -> list:
    """The values a checkpoint would overwrite, to go back to `base` later."""
    import numpy as np

    from kgpt2.checkpoints import checkpoint_variables

    return [np.array(v) for v in checkpoint_variables(model)]


def restore(model, run_dir, checkpoint: str = "latest", base: list | None = None) -> str:
    """Put checkpoint `checkpoint` of `run_dir` into `model`; return its id.

    `base` (a `snapshot` of the freshly built model) lets `checkpoint="base"`
    undo an earlier restore on the same model.
    """
    if checkpoint == BASE:
        if base is not None:
            from kgpt2.checkpoints import checkpoint_variables

            for var, value in zip(checkpoint_variables(model), base):
                var.assign(value)
        return BASE
    ckpt = CheckpointManager(run_dir).get(checkpoint)
    CheckpointManager.restore(model, ckpt)
    return ckpt.id


def load_model(run_dir, checkpoint: str = "latest"):
    """(model, tokenizer, cfg) for a checkpoint of a run (`base` = untrained)."""
    cfg = load_run_config(run_dir)
    model, tokenizer = build_run_model(cfg)
    restore(model, run_dir, checkpoint)
    return model, tokenizer, cfg
