"""A from-scratch GPT-2 for `model.preset = "scratch"`: `resolve_scratch(cfg)`.

    >>> from kgpt2.scratch import resolve_scratch
"""

from kgpt2.pretrain import resolve_scratch  # noqa: F401  # moved here by the pretrain split
