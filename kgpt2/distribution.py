"""Data-parallel training over the devices of one host, with Keras' distribution API.

`train.devices` ("1", a count, or "all"; CLI `kgpt2 train --devices all`)
picks the devices; `keras.distribution.DataParallel` then replicates the
weights and optimizer state on each and splits every batch along its first
axis, so the staged trainer, its checkpoints and resume are unchanged.
`train.batch_size` stays the *global* batch (what one optimizer step sees),
so a run can be resumed on another number of devices; it must divide by the
device count. Keras distributes on the JAX backend only.

    >>> from kgpt2.distribution import plan_data_parallel
    >>> plan_data_parallel("1", batch_size=8) is None   # one device: the plain path
    True
    >>> # XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax:
    >>> # plan = plan_data_parallel("all", batch_size=8, device="cpu")
    >>> # plan.describe() -> 'data parallel on 2 devices (cpu:0, cpu:1): global batch 8 = 4 per device'
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import keras

from kgpt2.errors import UserError


@dataclass(frozen=True)
class DataParallelPlan:
    devices: tuple  # Keras device names, e.g. ("gpu:0", "gpu:1")
    global_batch: int

    @property
    def per_device_batch(self) -> int:
        return self.global_batch // len(self.devices)

    def describe(self) -> str:
        return (f"data parallel on {len(self.devices)} devices ({', '.join(self.devices)}): "
                f"global batch {self.global_batch} = {self.per_device_batch} per device")

    @contextlib.contextmanager
    def scope(self):
        """Everything built and fit inside is replicated; the global setting is restored after."""
        distribution = keras.distribution.DataParallel(devices=list(self.devices))
        with distribution.scope():
            yield distribution


def _devices(platform: str) -> list:
    try:
        return keras.distribution.list_devices(platform)
    except RuntimeError:  # JAX has no such platform here
        return []


def _count(spec) -> int | str:
    text = str(spec).strip().lower()
    if text in ("all", "auto"):
        return "all"
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise UserError(f"train.devices must be a positive count or 'all', got {spec!r}")


def plan_data_parallel(spec, batch_size: int, device: str = "auto") -> DataParallelPlan | None:
    """The data-parallel plan for `train.devices = spec`, or None for one device.

    `device` (train.device): "gpu" or "cpu" to use that kind of device;
    "auto" takes the GPUs when there are any, else the CPU devices (XLA's
    virtual host devices, which is how the tests exercise this path).
    """
    count = _count(spec)
    if count == 1:
        return None
    platform = (device or "auto").lower()
    if platform not in ("auto", "cpu", "gpu"):
        raise UserError(f"train.device '{device}' names one device; with train.devices={spec!r} "
                        "use train.device = auto, gpu or cpu")
    backend = keras.backend.backend()
    if backend != "jax":
        raise UserError(f"training on several devices (train.devices={spec!r}) needs the JAX backend "
                        f"(KERAS_BACKEND=jax); the {backend} backend trains on one device")
    if platform == "auto":
        platform = "gpu" if _devices("gpu") else "cpu"
    available = _devices(platform)
    if count == "all":
        count = len(available)
    if count > len(available):
        raise UserError(f"train.devices={count} was asked for, but JAX sees {len(available)} {platform} device(s)")
    if count == 1:
        return None
    if batch_size % count:
        raise UserError(f"train.batch_size {batch_size} (the global batch) must divide by the {count} devices; "
                        f"use a multiple of {count}")
    return DataParallelPlan(tuple(available[:count]), batch_size)
