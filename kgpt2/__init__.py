"""kgpt2: fine-tune GPT-2 on your own corpora with Keras 3 and KerasHub.

Data flows one way: source -> shards -> stage plan -> trainer -> checkpoints
-> evaluation / generation / demo (docs/architecture.md has the module map).

    >>> import kgpt2
    >>> # kgpt2.prepare("pydoc", "shards", tokenizer)   # corpus -> token shards
    >>> # from kgpt2.train import train; train(kgpt2.load_config("pubmed_lora"))
    >>> # kgpt2.evaluate_run("checkpoints/pubmed", checkpoints="all", compare_base=True)
    >>> # kgpt2.generate_from_run("checkpoints/pubmed", "Parkinson's disease is")
"""

from kgpt2.backend import choose_backend

choose_backend()  # before anything imports keras

__version__ = "0.1.0"

_API = {
    "load_config": "kgpt2.config",
    "prepare": "kgpt2.data.shards",
    "ShardSet": "kgpt2.data.shards",
    "Tokenizer": "kgpt2.model.tokenizer",
    "evaluate_run": "kgpt2.evaluate",
    "Generator": "kgpt2.generate",
    "generate_from_run": "kgpt2.generate",
    "Engine": "kgpt2.generation.engine",
    "load_model": "kgpt2.run",
    "UserError": "kgpt2.errors",
}


# No public name here may be a submodule's (train, quickstart, evaluate, generate...): importing the submodule
# sets the package's attribute to it, so a function of that name worked until something imported the module
# (a second kgpt2.train(cfg) was "'module' object is not callable"): `from kgpt2.train import train` instead.
# tests/test_architecture.py checks.


def __getattr__(name):
    # Lazy: `import kgpt2` stays cheap (no keras/TensorFlow import) until used.
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'kgpt2' has no attribute {name!r}")

