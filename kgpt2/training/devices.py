"""Which device training runs on, and the precision that suits it.

`--device auto` takes the first GPU if there is one, else the CPU, and says
which. Asking for a GPU that is not there is an error, never a silent CPU run.

    >>> from kgpt2.training.devices import resolve_device
    >>> d = resolve_device("cpu")
    >>> d.keras_name, d.policy("auto")
    ('cpu:0', 'float32')
"""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras

from kgpt2.errors import UserError
from kgpt2.kernels.cudnn_attention import wants_cudnn_dropout


@dataclass(frozen=True)
class Device:
    keras_name: str  # what keras.device() takes, e.g. "gpu:0"
    description: str  # e.g. "NVIDIA H100 80GB HBM3"
    bf16: bool  # the GPU computes bfloat16 natively (Ampere and newer)

    @property
    def is_gpu(self) -> bool:
        return self.keras_name.startswith("gpu")

    @property
    def runs_triton(self) -> bool:
        """XLA compiles Pallas' Triton kernels for Ampere (compute capability 8.0) and newer only: not Colab's T4."""
        return self.is_gpu and self.bf16  # `bf16` is drawn at that same line (list_gpus)

    def policy(self, precision: str) -> str:
        """The Keras dtype policy for a `train.precision` setting."""
        if precision != "auto":
            return precision
        if not self.is_gpu:
            return "float32"
        # Pre-Ampere GPUs (Colab's T4, V100) have fast fp16 but no bf16; Keras
        # wraps the optimizer in a LossScaleOptimizer under mixed_float16.
        return "mixed_bfloat16" if self.bf16 else "mixed_float16"

    def scope(self):
        return keras.device(self.keras_name)


# Command buffers (CUDA graphs) for every kind of thunk XLA records by default but cuDNN's: a cuDNN attention call
# with dropout inside one aborts the process (cuda_dnn.cc "Check failed: local_device_ordinal.has_value()", H200,
# jaxlib 0.11.2); without command buffers at all the Shakespeare step took 12.67 ms instead of 8.94.
COMMAND_BUFFERS_WITHOUT_CUDNN = "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,WHILE,CONDITIONAL"


def step_compiler_options(train, lora: bool, device: Device, hidden_dim: int) -> dict:
    """XLA options for compiling the training step of a model `hidden_dim` wide ({} off JAX or off a GPU).

    `train.triton_gemm`: "auto" is cuBLAS (Triton GEMMs off) for full training of a GPT-2-sized model
    (hidden >= 768: +3.3% at 124M on an H200) and XLA's default elsewhere (LoRA: off is -0.9%; the
    Shakespeare model, 384 wide: off is -4.2%; docs/benchmarks.md). `train.attention_dropout_kernel =
    "cudnn"` (or "auto", which is "cudnn" on a JAX GPU) keeps cuDNN's calls out of command buffers.

        >>> from kgpt2.config_sections import TrainConfig
        >>> step_compiler_options(TrainConfig(), lora=False, device=Device("cpu:0", "CPU", False), hidden_dim=768)
        {}

    (On a JAX GPU the same call gives {'xla_gpu_enable_triton_gemm': False}: tests/test_speed_levers.py.)
    """
    if keras.backend.backend() != "jax" or not device.is_gpu:
        return {}
    options = {}
    if train.triton_gemm == "off" or (train.triton_gemm == "auto" and not lora and hidden_dim >= 768):
        options["xla_gpu_enable_triton_gemm"] = False
    if wants_cudnn_dropout(train.attention_dropout_kernel):
        options["xla_gpu_enable_command_buffer"] = COMMAND_BUFFERS_WITHOUT_CUDNN
    return options


def kernel_form() -> str:
    """"pallas" where JAX's first device runs Pallas' Triton kernels (a GPU of compute capability 8.0+), else "jnp"
    (the same maths in jnp; on a CPU, kernel="pallas" runs Pallas' interpreter: tests). What kgpt2's kernels'
    "auto" means; `kgpt2 train` passes the form for its own device instead (Device.runs_triton)."""
    import jax

    first = jax.devices()[0]
    return "pallas" if first.platform == "gpu" and float(getattr(first, "compute_capability", 0) or 0) >= 8.0 else "jnp"


def pallas_interprets() -> bool:
    """Whether kgpt2's Pallas kernels run in Pallas' interpreter: off a GPU, where kernel="pallas" is for tests."""
    import jax

    return jax.devices()[0].platform != "gpu"


def pallas_modules():
    """(pallas, its Triton module, jax, jax.numpy), imported where a kernel is built: importing kgpt2 imports no jax."""
    import jax
    import jax.numpy as jnp
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    return pl, plgpu, jax, jnp


def pallas_call(kernel, out_shape, name: str, warps: int, stages: int = 1, programs: int | None = None):
    """kgpt2's kernels' one launch: `pl.pallas_call` with Triton's (num_warps, num_stages), over `programs`
    programs (None: no grid, for a caller that vmaps it, a program per row), in Pallas' interpreter off a GPU."""
    pl, plgpu, _, _ = pallas_modules()
    grid = {} if programs is None else {"grid": (programs,)}
    return pl.pallas_call(kernel, out_shape=out_shape, compiler_params=plgpu.CompilerParams(
        num_warps=warps, num_stages=stages), interpret=pallas_interprets(), name=name, **grid)


def list_gpus() -> list[tuple[str, bool]]:
    """(name, has_bf16) for each GPU the active backend can see."""
    backend = keras.backend.backend()
    gpus = []
    if backend == "jax":
        import jax

        try:
            for d in jax.devices("gpu"):
                cc = getattr(d, "compute_capability", "0")
                gpus.append((d.device_kind, float(cc or 0) >= 8.0))
        except RuntimeError:  # no GPU platform
            pass
    elif backend == "tensorflow":
        import tensorflow as tf

        for g in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(g)
            cc = details.get("compute_capability", (0, 0))
            gpus.append((details.get("device_name", g.name), tuple(cc) >= (8, 0)))
    elif backend == "torch":
        import torch

        for i in range(torch.cuda.device_count()):
            gpus.append((torch.cuda.get_device_name(i), torch.cuda.is_bf16_supported()))
    return gpus


def resolve_device(spec: str = "auto") -> Device:
    spec = (spec or "auto").lower()
    if spec == "auto":
        gpus = list_gpus()
        if gpus:
            return Device("gpu:0", gpus[0][0], gpus[0][1])
        return Device("cpu:0", "CPU", False)
    match = re.fullmatch(r"(cpu|gpu)(?::(\d+))?", spec)
    if not match:
        raise UserError(f"device '{spec}' is not one of auto, cpu, gpu, gpu:N")
    kind, index = match.group(1), int(match.group(2) or 0)
    if kind == "cpu":
        return Device("cpu:0", "CPU", False)
    gpus = list_gpus()
    if index >= len(gpus):
        raise UserError(no_such_gpu(spec, len(gpus), keras.backend.backend()))
    return Device(f"gpu:{index}", gpus[index][0], gpus[index][1])


CUDA_BUILDS = {"jax": "pip install -U 'jax[cuda12]'", "tensorflow": "pip install -U 'tensorflow[and-cuda]'",
               "torch": "a CUDA build of torch from pytorch.org"}


def has_nvidia_gpu() -> bool:
    """Whether the machine shows an NVIDIA GPU (its device file or nvidia-smi), whatever the backend sees."""
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def no_such_gpu(spec: str, seen: int, backend: str, nvidia: bool | None = None) -> str:
    """Why `spec` cannot be had, and what to do: a machine without a GPU (a Colab CPU runtime) or a backend built
    without CUDA on a machine that has one (`pip install jax` on a rented GPU) are the usual two.

    >>> no_such_gpu("gpu", 0, "jax", nvidia=True)
    "device 'gpu' was asked for: this machine has an NVIDIA GPU, but the jax backend sees none (a build without CUDA?); install its CUDA build: pip install -U 'jax[cuda12]'"
    """
    if seen:
        return f"device '{spec}' was asked for, but the {backend} backend sees {seen} GPU(s) (gpu:0 to gpu:{seen - 1})"
    if nvidia is None:
        nvidia = has_nvidia_gpu()
    if nvidia:
        return (f"device '{spec}' was asked for: this machine has an NVIDIA GPU, but the {backend} backend sees none "
                f"(a build without CUDA?); install its CUDA build: {CUDA_BUILDS.get(backend, 'its CUDA build')}")
    return (f"device '{spec}' was asked for, but this machine has no GPU the {backend} backend can see (on Colab: "
            "Runtime > Change runtime type > a GPU); --device cpu trains on the CPU")


@contextlib.contextmanager
def dtype_policy(policy: str):
    """Build layers under Keras dtype policy `policy`, then put the global policy back.

    A Keras layer keeps the policy it was built with, so a model built here
    computes in `policy` and the caller's global setting is left as it was.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
