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


def import_keras_quietly() -> None:
    """Import keras and keras_hub with the C++ start-up lines of TensorFlow hidden.

    keras-hub imports TensorFlow, whose C++ runtime prints CUDA probing lines
    ("Could not find cuda drivers ...") straight to file descriptor 2 before
    any logging is set up, so no environment variable silences them. The CLI
    keeps its stderr for one-line errors, so it imports these with fd 2
    pointed at /dev/null; Python exceptions still surface afterwards.
    """
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
        import keras_hub  # noqa: F401
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
