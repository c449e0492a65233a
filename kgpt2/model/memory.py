"""Peak GPU memory of a training config, estimated before anything compiles.

The trainer warns when the estimate exceeds what the device offers, so a
user learns "this will not fit" in a second instead of after a long XLA
compile and an out-of-memory error. The formula is fitted to peak memory
measured on an H100 (docs/benchmarks.md, "Memory by model size": GPT-2
124M and 355M at sequence 1,024, batch 1 and 2, JAX, mixed_bfloat16):

    bytes = params x per_param + batch x T x (per_layer x layers x hidden + per_vocab x vocab)

per_param: fp32 weights + AdamW moments + gradients (full), fp32 frozen
weights (LoRA); activations: what the backward pass keeps per token.

    >>> from kgpt2.model.memory import estimate_training_bytes
    >>> round(estimate_training_bytes(124_475_904, "full", 16, 1024, 12, 768, 50304) / 1e9, 1)
    11.7
"""

from __future__ import annotations

# (bytes per parameter, bytes per layer x token x hidden, bytes per token x vocab entry)
COEFFICIENTS = {
    "full": (14.4, 38.1, 5.05),
    "lora": (6.3, 30.5, 3.9),
    # int8 base + LoRA: only 124M was measured (0.96 GB at batch 0, 0.2 GB a
    # sample); the LoRA activation terms are used as an upper bound.
    "int8-lora": (7.7, 30.5, 3.9),
}


def estimate_training_bytes(params: int, mode: str, batch: int, sequence: int,
                            layers: int, hidden: int, vocabulary: int) -> float:
    per_param, per_layer, per_vocab = COEFFICIENTS[mode]
    return params * per_param + batch * sequence * (per_layer * layers * hidden + per_vocab * vocabulary)


def device_memory_bytes() -> int | None:
    """Memory the backend may use on its first GPU, or None (CPU, or unknown)."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            gpus = jax.devices("gpu")
            stats = gpus[0].memory_stats() or {} if gpus else {}
            return int(stats["bytes_limit"]) if "bytes_limit" in stats else None
        if backend == "torch":
            import torch

            return int(torch.cuda.get_device_properties(0).total_memory) if torch.cuda.is_available() else None
        if backend == "tensorflow":
            import tensorflow as tf

            return _nvidia_smi_total_bytes() if tf.config.list_physical_devices("GPU") else None
    except (RuntimeError, KeyError, IndexError):
        return None
    return None


def host_available_bytes() -> int | None:
    """The machine's available RAM (Linux MemAvailable: free memory plus caches it can drop), or None.

    Training on a CPU holds the model, the optimizer and the activations in RAM; Colab's runs out
    without a word from the trainer (the kernel dies). The estimate above is fitted to mixed
    precision on a GPU and so undershoots float32 on a CPU: a warning from it is never a false alarm.
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _nvidia_smi_total_bytes() -> int | None:
    """The first visible GPU's total memory from nvidia-smi (TensorFlow reports none before allocating).

    TensorFlow takes (nearly) all of a GPU's memory by default, so the total
    is what a training step may use.
    """
    import os
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits",
                              "-i", visible], capture_output=True, text=True, timeout=20)
        return int(float(out.stdout.split()[0]) * 2**20) if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def propose_batch(batch: int, accumulation: int, fits: int) -> tuple[int, int]:
    """(batch_size, gradient_accumulation_steps) that fit and keep the optimizer's batch.

    The per-step batch is the largest divisor of `batch` that is at most
    `fits`, so batch_size x accumulation stays what the config asked for.

        >>> propose_batch(64, 1, 20)
        (16, 4)
    """
    per_step = max(d for d in range(1, max(1, min(batch, fits)) + 1) if batch % d == 0)
    return per_step, accumulation * batch // per_step


def check_fits(params: int, mode: str, batch: int, sequence: int, layers: int, hidden: int,
               vocabulary: int, available: int | None, accumulation: int = 1, on_gpu: bool = True) -> str | None:
    """A warning sentence when the estimate exceeds `available` bytes, else None.

    The sentence proposes a batch size and gradient accumulation that fit
    with the same optimizer batch (`accumulation`: the config's current
    train.gradient_accumulation_steps).
    """
    if not available:
        return None
    need = estimate_training_bytes(params, mode, batch, sequence, layers, hidden, vocabulary)
    if need <= available:
        return None
    per_sample = estimate_training_bytes(0, mode, 1, sequence, layers, hidden, vocabulary)
    fixed = estimate_training_bytes(params, mode, 0, sequence, layers, hidden, vocabulary)
    fits = max(0, int((available - fixed) // per_sample))
    if fits:
        per_step, steps = propose_batch(batch, accumulation, fits)
        hint = (f"train.batch_size={per_step} with train.gradient_accumulation_steps={steps} should fit "
                f"(the same {batch * accumulation} sequences per optimizer step)")
        if steps > accumulation:  # kgpt2's steps are batches (docs/training.md): the same run takes more of them
            hint += (f"; steps count batches, so multiply train.max_steps, train.warmup_steps and "
                     f"train.decay_steps by {steps // accumulation} where you set them")
    else:
        hint = "use LoRA, a smaller model or a shorter data.sequence_length"
    offer = f"the device offers {available / 1e9:.1f} GB" if on_gpu else f"the machine has {available / 1e9:.1f} GB free"
    return (f"this config needs about {need / 1e9:.1f} GB of {'GPU ' if on_gpu else ''}memory for training "
            f"(batch {batch} x {sequence} tokens, {mode}), but {offer}; {hint}")
