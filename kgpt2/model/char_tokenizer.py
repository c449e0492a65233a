"""Character-level tokenizer, nanoGPT style: one token per distinct character.

The vocabulary is the sorted distinct characters of the training text (65 for
tiny Shakespeare, as in nanoGPT's `data/shakespeare_char/prepare.py`) plus
kgpt2's end-of-text token, appended last (id 65 there), which the shards put
after each document. It has the same interface as `kgpt2.model.tokenizer.Tokenizer`
(encode, encode_batch, encode_arrays, decode, eos_id, vocab_size, hash,
save/from_dir), so shards, training, evaluation, generation and the demo use
it unchanged. `Tokenizer.from_dir` returns one when a directory holds
`char_vocabulary.json`. `tokenizers` has no character-level model that keeps
every character (its WordLevel/BPE models pre-split on whitespace), so this
is a few lines of numpy.

    >>> from kgpt2.model.char_tokenizer import CharTokenizer
    >>> tok = CharTokenizer.train(["hello world"])
    >>> tok.vocab_size, tok.encode("hello")
    (9, [3, 2, 4, 4, 5])
    >>> tok.decode(tok.encode("hello world"))
    'hello world'
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

import numpy as np

from kgpt2.errors import UserError
from kgpt2.io import atomic_write_text

EOS = "<|endoftext|>"
CHAR_VOCAB_FILE = "char_vocabulary.json"


class UnknownCharacter(UserError):
    """A character the vocabulary lacks: `kgpt2 prepare` names the file and how to get a tokenizer that has it."""

    WHY = "only the characters of the text it was trained on are"

    def __init__(self, char: str):
        super().__init__(f"character {char!r} is not in the character tokenizer's vocabulary ({self.WHY})")
        self.char = char

    def for_prepare(self, where: str) -> UserError:
        """The error `kgpt2 prepare` gives: the document named, and the command that makes a tokenizer for it."""
        return UserError(f"the document at {where} has the character {self.char!r}, which is not in the character "
                         f"tokenizer's vocabulary ({self.WHY}); train a character tokenizer on this text too "
                         "(`kgpt2 tokenizer train --char --source FILES --out NEW_FOLDER`, FILES all the text it is "
                         "to read) and prepare with --tokenizer NEW_FOLDER")


class CharTokenizer:
    """Token id i is the i-th of the sorted characters; the last id is end-of-text
    (a `kgpt2.model.tokenizer_protocol.Tokenizer` of kind "char")."""

    kind = "char"
    engine = "char"

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        if not chars or any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise UserError("a character vocabulary must be a non-empty list of distinct single characters")
        self.chars = chars
        self.vocabulary = {c: i for i, c in enumerate(chars)} | {EOS: len(chars)}
        self.merges: list = []
        self.eos_id = len(chars)
        self.vocab_size = len(chars) + 1
        # Code point -> id lookup table, for numpy-speed encoding.
        self._table = np.full(max(map(ord, chars)) + 1, -1, dtype=np.int64)
        self._table[[ord(c) for c in chars]] = np.arange(len(chars))
        self._chars = np.array(chars + [""], dtype=object)

    # Construction -----------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str]) -> "CharTokenizer":
        """The sorted set of characters that occur in `texts`."""
        seen: set = set()
        for text in texts:
            seen.update(text)
        return cls(sorted(seen))

    @classmethod
    def from_dir(cls, directory) -> "CharTokenizer":
        path = Path(directory) / CHAR_VOCAB_FILE
        if not path.is_file():
            raise UserError(f"'{directory}' holds no {CHAR_VOCAB_FILE}")
        try:
            text = path.read_text(encoding="utf-8")
            spec = json.loads(text) if text.strip() else None
        except ValueError as e:  # not JSON, or not text at all (UnicodeDecodeError)
            why = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else "not valid JSON"
            raise UserError(f"tokenizer file '{path}' is damaged or not a tokenizer ({why})") from None
        if spec is None or (isinstance(spec, dict) and spec.get("chars") == []):
            raise UserError(f"tokenizer file '{path}' is empty: it holds no characters")
        try:
            return cls(spec["chars"])
        except (KeyError, TypeError, UserError):  # no list of distinct single characters
            raise UserError(f"'{path}' is not a kgpt2 character vocabulary") from None

    def save(self, directory) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        spec = {"type": "char", "chars": self.chars, "eos": EOS, "eos_id": self.eos_id}
        atomic_write_text(d / CHAR_VOCAB_FILE, json.dumps(spec, ensure_ascii=False, indent=0))
        return d

    # Use --------------------------------------------------------------------
    def encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.full(codes.shape, -1, dtype=np.int64)
        known = codes < len(self._table)
        ids[known] = self._table[codes[known]]
        if (ids < 0).any():
            bad = text[int(np.argmax(ids < 0))]
            raise UnknownCharacter(bad)
        return ids

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_arrays(self, texts: list[str], executor=None) -> list:
        return list(executor.map(self.encode_array, texts)) if executor is not None else [
            self.encode_array(t) for t in texts]

    def decode(self, ids) -> str:
        ids = np.asarray([int(i) for i in ids], dtype=np.int64)
        ids = ids[(ids >= 0) & (ids < self.eos_id)]  # end-of-text and pad ids print nothing
        return "".join(self._chars[ids])

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps({"char": self.chars}).encode()).hexdigest()[:16]
