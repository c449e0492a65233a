"""Moved to `kgpt2.run` (the `Run` class); this name stays until the pretrain split lands.

    >>> from kgpt2.runs import load_run_config
"""

# pretrain.py still imports from here; another engineer is splitting it.
from kgpt2.run import BASE, build_run_model, list_checkpoints, list_runs, load_model, load_run_config, restore, snapshot  # noqa: F401
