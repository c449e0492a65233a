"""Keras backend choice, made before anything imports keras.

kgpt2 honours `KERAS_BACKEND`. When it is unset, JAX is preferred (the fast
backend on GPU: see docs/benchmarks.md) if it is importable, else TensorFlow.

    >>> import kgpt2  # picks the backend once, here
    >>> import keras
    >>> keras.backend.backend() in ("jax", "tensorflow", "torch")
    True
"""

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys

from kgpt2 import compat


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


@contextlib.contextmanager
def _stderr_hidden():
    """File descriptor 2 pointed at /dev/null (C++ writes there directly); Python's exceptions surface after."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_keras_quietly() -> None:
    """Import keras and keras_hub with the C++ start-up lines of TensorFlow hidden, and on JAX without TensorFlow.

    keras-hub imports TensorFlow, whose C++ runtime prints CUDA probing lines
    ("Could not find cuda drivers ...") straight to file descriptor 2 before
    any logging is set up, so no environment variable silences them. The CLI
    keeps its stderr for one-line errors, so it imports these with fd 2
    pointed at /dev/null; Python exceptions still surface afterwards.

    On a backend other than TensorFlow, keras-hub only needs TensorFlow for `tf.data` pipelines, which kgpt2 does not
    build there (its preprocessing layers run in Python, keras-hub's own default), yet it imports TensorFlow when
    it can: ~3.8 s and ~590 MB of a process on this project's CPU machine, paid by every `kgpt2` command. So the two
    are imported with TensorFlow hidden (`tensorflow_hidden`), and it is unhidden at once; Keras' own checks for it
    (before seeding, serialising a config) then ask whether it is imported instead of importing it
    (`compat.keras_sees_tensorflow_only_once_imported`), and kgpt2 writes TensorBoard events without it, so
    training on JAX runs without it too. What still needs it (reading a legacy TF `.ckpt`) imports it, quietly
    (`_QuietTensorFlowImport`); only keras-hub's TF paths stay off. Nothing is hidden when TensorFlow is already
    imported or is the backend. (JAX's persistent compilation cache, when a user sets one, imports TensorFlow
    through its file layer, etils, at the first compile: quietly too.)

        >>> import_keras_quietly()
        >>> "keras_hub" in sys.modules
        True

    (tests/test_imports.py checks that `kgpt2 generate` and `kgpt2 train` on JAX leave TensorFlow unimported.)
    """
    with _stderr_hidden(), tensorflow_hidden() as hidden:
        import keras  # noqa: F401
        import keras_hub  # noqa: F401
    if hidden:
        compat.keras_sees_tensorflow_only_once_imported()
        if not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _QuietTensorFlowImport())


@contextlib.contextmanager
def tensorflow_hidden():
    """`import tensorflow` fails inside (Python's documented `sys.modules[name] = None`), on a backend other than
    TensorFlow while it is not imported yet; nothing changes otherwise.

    keras-hub imports TensorFlow when it can: at its own import, and in `from_preset` to ask TF's file systems
    about the preset's URL scheme even for a local folder (preset_utils.get_file). kgpt2 imports keras-hub and
    loads local presets only with TensorFlow hidden (`import_keras_quietly`, kgpt2.model.models.build_backbone).
    """
    hide = os.environ.get("KERAS_BACKEND") not in (None, "", "tensorflow") and "tensorflow" not in sys.modules
    if hide:
        sys.modules["tensorflow"] = None
    try:
        yield hide
    finally:
        if hide and "tensorflow" in sys.modules and sys.modules["tensorflow"] is None:
            del sys.modules["tensorflow"]


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Imports TensorFlow, whenever something first does, with fd 2 hidden (its C++ start-up lines, as above).

    After `import_keras_quietly` left TensorFlow out, any later import of it (reading a legacy `.ckpt`, JAX's
    persistent compilation cache through etils, a user's own) would print those lines into a command's stderr, where
    kgpt2 keeps one-line errors. Python's import system has no option for this, hence the finder: it wraps the
    real loader of the top module `tensorflow` only (once imported, Python asks no finder again).
    """

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        others = (f for f in sys.meta_path if f is not self and hasattr(f, "find_spec"))
        spec = next((s for s in (f.find_spec(name, path, target) for f in others) if s is not None), None)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader  # the real loader, as if never wrapped
        with _stderr_hidden():
            self.loader.exec_module(module)
