"""`Tokenizer`: what every kgpt2 tokenizer offers, so no code asks which kind it holds.

Two classes satisfy it: `kgpt2.model.tokenizer.Tokenizer` (GPT-2 byte-level BPE,
`kind == "bpe"`) and `kgpt2.model.char_tokenizer.CharTokenizer` (`kind == "char"`).
Shards, training, generation and export take any `Tokenizer`; the few places
whose output differs by kind (a KerasHub preset's tokenizer assets, a Hugging
Face export) read the declared `kind` instead of probing the object.

    >>> from kgpt2.model.char_tokenizer import CharTokenizer
    >>> from kgpt2.model.tokenizer_protocol import Tokenizer
    >>> tok = CharTokenizer("ab")
    >>> isinstance(tok, Tokenizer), tok.kind, tok.decode(tok.encode("abba") + [tok.eos_id])
    (True, 'char', 'abba')
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

KINDS = ("bpe", "char")


@runtime_checkable
class Tokenizer(Protocol):
    kind: Literal["bpe", "char"]
    vocab_size: int  # end-of-text included
    eos_id: int
    vocabulary: dict  # token string -> id
    merges: list  # BPE merge pairs in rank order; empty for characters

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def encode_arrays(self, texts: list[str], executor=None) -> list: ...

    def decode(self, ids) -> str: ...

    @property
    def hash(self) -> str: ...  # identifies the vocabulary (shards record it)

    def save(self, directory) -> Path: ...
