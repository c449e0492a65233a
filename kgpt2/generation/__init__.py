"""Text from a model: the batched engine in a KV cache's slots, its compiled programs, sampling and prompt templates.

`kgpt2.generate` (the verb), `kgpt2.serve` and `kgpt2.demo` all generate through `engine.Engine`.
"""
