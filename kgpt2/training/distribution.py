"""Training on several devices and hosts, with Keras' distribution API (JAX).

`train.devices` ("1", a count, or "all"; CLI `kgpt2 train --devices all`)
picks the devices; `keras.distribution.DataParallel` then replicates the
weights and optimizer state on each and splits every batch along its first
axis, so the staged trainer, its checkpoints and resume are unchanged.
`train.batch_size` stays the *global* batch (what one optimizer step sees),
so a run can be resumed on another number of devices; it must divide by the
device count. Keras distributes on the JAX backend only.

`train.mesh` ("data:4", "data:2,model:2") shards weights and optimizer
state instead (`keras.distribution.ModelParallel`, GPT-2 layout map below).
Several hosts: `start_processes` joins them (Keras' KERAS_DISTRIBUTION_*
variables), `local_rows` gives each process its rows of every batch, and
`is_writer` says which one writes the run folder (process 0).

    >>> from kgpt2.training.distribution import parse_mesh, plan_data_parallel
    >>> plan_data_parallel("1", batch_size=8) is None   # one device: the plain path
    True
    >>> parse_mesh("data:2,model:2"), parse_mesh("data:4"), parse_mesh("")
    ((2, 2), (4, 1), None)
    >>> # XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax:
    >>> # plan = plan_data_parallel("all", batch_size=8, device="cpu")
    >>> # plan.describe() -> 'data parallel on 2 devices (cpu:0, cpu:1): global batch 8 = 4 per device'
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import keras
import numpy as np

from kgpt2 import compat
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
        # Each process already feeds only its own rows (local_rows), so Keras must not shard the data again.
        distribution = keras.distribution.DataParallel(devices=list(self.devices), auto_shard_dataset=False)
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


def _available(what: str, device: str) -> list:
    """The devices of train.device's kind ("auto": GPUs if any, else XLA's CPU devices), on JAX only."""
    platform = (device or "auto").lower()
    if platform not in ("auto", "cpu", "gpu"):
        raise UserError(f"train.device '{device}' names one device; with {what} "
                        "use train.device = auto, gpu or cpu")
    backend = keras.backend.backend()
    if backend != "jax":
        raise UserError(f"training on several devices ({what}) needs the JAX backend "
                        f"(KERAS_BACKEND=jax); the {backend} backend trains on one device")
    if platform == "auto":
        platform = "gpu" if _devices("gpu") else "cpu"
    return _devices(platform)


def _kind(available: list, device: str) -> str:
    return available[0].split(":")[0] if available else (device or "auto")


def plan_data_parallel(spec, batch_size: int, device: str = "auto") -> DataParallelPlan | None:
    """The data-parallel plan for `train.devices = spec`, or None for one device.

    `device` (train.device): "gpu" or "cpu" to use that kind of device;
    "auto" takes the GPUs when there are any, else the CPU devices (XLA's
    virtual host devices, which is how the tests exercise this path).
    """
    count = _count(spec)
    if count == 1:
        return None
    available = _available(f"train.devices={spec!r}", device)
    if count == "all":
        count = len(available)
    if count > len(available):
        raise UserError(f"train.devices={count} was asked for, but JAX sees {len(available)} {_kind(available, device)} device(s)")
    if count == 1:
        return None
    if batch_size % count:
        raise UserError(f"train.batch_size {batch_size} (the global batch) must divide by the {count} devices; "
                        f"use a multiple of {count}")
    return DataParallelPlan(tuple(available[:count]), batch_size)


# -- sharded weights: keras.distribution.ModelParallel on a data x model mesh

def parse_mesh(spec: str) -> tuple[int, int] | None:
    """`train.mesh` as (data, model) axis sizes; None for "" (plain data parallel on train.devices).

    "data:4" shards every weight over 4 devices along its hidden axis and
    splits the batch over them (FSDP / ZeRO-3 style); "data:2,model:2" also
    splits attention heads and MLP columns over the `model` axis (Megatron).
    """
    text = str(spec or "").replace(" ", "").lower()
    if not text:
        return None
    sizes = {}
    for part in text.split(","):
        name, _, size = part.partition(":")
        if name not in ("data", "model") or name in sizes or not size.isdigit() or int(size) < 1:
            raise UserError(f"train.mesh must look like \"data:4\" or \"data:2,model:2\" (axis sizes >= 1); got {spec!r}")
        sizes[name] = int(size)
    return sizes.get("data", 1), sizes.get("model", 1)


# KerasHub ships get_layout_map for Gemma and Llama, not GPT-2; this follows
# Gemma's: each kernel's hidden axis on `data` (FSDP) and its heads / MLP
# columns on `model` (tensor parallel). Layer norms and LoRA factors are small
# and stay replicated. Paths as keras-hub 0.32 names GPT2Backbone's variables.
GPT2_LAYOUT = {
    r".*token_embedding/embeddings": ("model", "data"),  # (vocabulary, hidden)
    r".*position_embedding/embeddings": (None, "data"),  # (positions, hidden)
    r".*self_attention/(query|key|value)/kernel": ("data", "model", None),  # (hidden, heads, head)
    r".*self_attention/(query|key|value)/bias": ("model", None),
    r".*self_attention/attention_output/kernel": ("model", None, "data"),  # (heads, head, hidden)
    r".*feedforward_intermediate_dense/kernel": ("data", "model"),  # (hidden, intermediate)
    r".*feedforward_intermediate_dense/bias": ("model",),
    r".*feedforward_output_dense/kernel": ("model", "data"),  # (intermediate, hidden)
}


def gpt2_layout_map(device_mesh) -> keras.distribution.LayoutMap:
    """GPT-2's `keras.distribution.LayoutMap` on a mesh with axes `data` and `model`."""
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for pattern, axes in GPT2_LAYOUT.items():
        layout_map[pattern] = axes
    return layout_map


class _DivisibleModelParallel(keras.distribution.ModelParallel):
    """ModelParallel that replicates a weight axis the mesh axis does not divide.

    A LayoutMap maps variable paths, not shapes, and GPT-2 XL's 25 heads do not
    divide by 2, 4 or 8: such an axis stays whole instead of failing in XLA.
    Optimizer slots copy their variable's layout (Keras' add_variable_from_reference).
    """

    def get_variable_layout(self, variable):
        layout = super().get_variable_layout(variable)
        mesh = dict(zip(self.device_mesh.axis_names, self.device_mesh.shape))
        axes = tuple(a if a is None or dim % mesh[a] == 0 else None for a, dim in zip(layout.axes, variable.shape))
        if axes == tuple(layout.axes):
            return layout
        return keras.distribution.TensorLayout(axes, self.device_mesh)


def same_attention_sharding(query, key, value):
    """Query, key and value laid out alike on a sharded mesh; unchanged elsewhere.

    cuDNN's fused attention partitions only inputs that share one sharding
    ("Query, key and value should have same sharding" otherwise, seen on
    2 x H200 with `train.mesh="data:2"`), and XLA infers each projection's
    output sharding from its own kernel. So under `train.mesh` the three are
    pinned to (batch on `data`, heads on `model` where it divides them).
    """
    distribution = keras.distribution.distribution()
    if not isinstance(distribution, keras.distribution.ModelParallel) or query.shape[0] is None:
        return query, key, value
    mesh = distribution.device_mesh
    sizes = dict(zip(mesh.axis_names, mesh.shape))
    heads = "model" if query.shape[2] % sizes["model"] == 0 else None
    batch = "data" if query.shape[0] % sizes["data"] == 0 else None
    layout = keras.distribution.TensorLayout((batch, None, heads, None), mesh)
    return tuple(keras.distribution.distribute_tensor(x, layout) for x in (query, key, value))


def pin_attention_sharding(backbone) -> None:
    """Lay query, key and value out alike (`same_attention_sharding`) in every self-attention layer.

    Applied when the backbone is built under `train.mesh` (a ModelParallel
    distribution is active then, and the weights take their layouts from it),
    on every attention path alike: the causal kernel, keras-hub's masked one
    (`model.causal_attention=false`, attention dropout, packed examples).
    Without a mesh nothing is wrapped, so the plain path pays no extra call.
    """
    if not isinstance(keras.distribution.distribution(), keras.distribution.ModelParallel):
        return
    for attention in compat.self_attention_layers(backbone):

        def pinned_for(compute):
            def pinned(query, key, value, *args, **kwargs):  # Keras passes the rest positionally
                return compute(*same_attention_sharding(query, key, value), *args, **kwargs)
            return pinned

        compat.wrap_compute_attention(attention, pinned_for)


@dataclass(frozen=True)
class ShardedPlan:
    devices: tuple
    data: int  # mesh axis the batch and each weight's hidden axis are split along
    model: int  # mesh axis heads and MLP columns are split along
    global_batch: int

    def describe(self) -> str:
        return (f"sharded weights (mesh data:{self.data} x model:{self.model}) on {len(self.devices)} devices: "
                f"global batch {self.global_batch} = {self.global_batch // self.data} per data shard")

    @contextlib.contextmanager
    def scope(self):
        mesh = keras.distribution.DeviceMesh((self.data, self.model), ("data", "model"), list(self.devices))
        distribution = _DivisibleModelParallel(layout_map=gpt2_layout_map(mesh), batch_dim_name="data",
                                               auto_shard_dataset=False)  # each process feeds its rows (local_rows)
        with distribution.scope():
            yield distribution


def plan_sharded(mesh_spec, batch_size: int, device: str = "auto", devices_spec="1") -> ShardedPlan | None:
    """The plan for `train.mesh = mesh_spec`; it takes data x model devices of train.device's kind."""
    sizes = parse_mesh(mesh_spec)
    if sizes is None:
        return None
    data, model = sizes
    count = data * model
    if str(devices_spec).strip().lower() not in ("1", "all", str(count)):
        raise UserError(f"train.mesh {mesh_spec!r} takes {count} devices but train.devices is {devices_spec!r}; "
                        f"leave train.devices at 1 or set it to {count}")
    available = _available(f"train.mesh={mesh_spec!r}", device)
    if count > len(available):
        raise UserError(f"train.mesh {mesh_spec!r} needs {count} devices, but JAX sees {len(available)} {_kind(available, device)} device(s)")
    if batch_size % data:
        raise UserError(f"train.batch_size {batch_size} (the global batch) must divide by the mesh's data axis ({data})")
    return ShardedPlan(tuple(available[:count]), data, model, batch_size)


def plan_distribution(train) -> DataParallelPlan | ShardedPlan | None:
    """The plan for a `TrainConfig`: `train.mesh` if set, else data parallel on `train.devices`."""
    if parse_mesh(train.mesh) is not None:
        return plan_sharded(train.mesh, train.batch_size, train.device, train.devices)
    return plan_data_parallel(train.devices, train.batch_size, train.device)


# -- several processes (hosts): JAX's multi-process runtime

def start_processes() -> int:
    """Join the other processes of a multi-host run, once; return the process count.

    Configured as Keras' `keras.distribution.initialize` reads it:
    KERAS_DISTRIBUTION_JOB_ADDRESSES (the coordinator "host:port" first),
    KERAS_DISTRIBUTION_NUM_PROCESSES, KERAS_DISTRIBUTION_PROCESS_ID. Without
    them this is one process, and JAX is not touched.
    """
    if not os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES") or int(os.environ["KERAS_DISTRIBUTION_NUM_PROCESSES"]) < 2:
        return 1
    if keras.backend.backend() != "jax":
        raise UserError("several processes (KERAS_DISTRIBUTION_NUM_PROCESSES) need the JAX backend (KERAS_BACKEND=jax)")
    import jax

    if not jax.distributed.is_initialized():
        keras.distribution.initialize()
    return jax.process_count()


def process_count() -> int:
    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count()


def process_index() -> int:
    if keras.backend.backend() != "jax":
        return 0
    import jax

    return jax.process_index()


def is_writer() -> bool:
    """Whether this process writes the run's files (checkpoints, logs, exports): process 0 only."""
    return process_index() == 0


def local_rows(batches):
    """This process's rows of every batch of a `WindowBatches` or `PackedBatches`: the global batch split by process.

    Keras (JAX) builds each global batch from every process's own rows
    (`jax.make_array_from_process_local_data`), so a process reads only the
    windows it feeds. One process: `batches` itself.
    """
    count = process_count()
    if count == 1:
        return batches
    if batches.batch_size % count:
        raise UserError(f"the batch of {batches.batch_size} must divide by the {count} processes")
    per_process = batches.batch_size // count
    rows = np.arange(batches.total_batches * batches.batch_size).reshape(-1, count, per_process)
    rows = rows[:, process_index(), :].ravel()
    rows = rows[rows < batches.num_windows]  # the last batch may be short
    return batches.take_rows(rows, per_process)


def spans_processes(variables) -> bool:
    """Whether some variable is split over devices of other processes (so Keras cannot save it as is).

    A replicated variable is whole on every host, whichever devices hold it.
    """
    def split_over_hosts(value):
        return not getattr(value, "is_fully_addressable", True) and not getattr(value, "is_fully_replicated", True)

    return any(split_over_hosts(getattr(v, "value", v)) for v in variables)


def host_array(value) -> np.ndarray:
    """A variable's whole value on this host; gathered from the other processes when sharded across them."""
    value = getattr(value, "value", value)
    if keras.backend.backend() == "jax":
        import jax

        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)
