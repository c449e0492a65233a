"""Keras backend choice, made before anything imports keras.

kgpt2 honours `KERAS_BACKEND`. When it is unset, JAX is preferred (the fast
backend on GPU: see docs/benchmarks.md) if it is importable, else TensorFlow.

    >>> import kgpt2  # picks the backend once, here
    >>> import keras
    >>> keras.backend.backend() in ("jax", "tensorflow", "torch")
    True
"""

import importlib.util
import logging
import os


def choose_backend():
    """Set `KERAS_BACKEND` if the user did not, and return the backend name."""
    if not os.environ.get("KERAS_BACKEND"):
        has_jax = importlib.util.find_spec("jax") is not None
        os.environ["KERAS_BACKEND"] = "jax" if has_jax else "tensorflow"
    # TensorFlow is imported by keras-hub even on JAX; keep its C++ start-up
    # chatter (CUDA probing, CPU feature notices) out of the user's terminal.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # grain warns on every dataset that its default read-ahead is below its
    # thread count; harmless for kgpt2's pre-batched sources.
    logging.getLogger("absl").setLevel(logging.ERROR)
    return os.environ["KERAS_BACKEND"]
