"""GPT-2 byte-level BPE that encodes exactly like OpenAI's GPT-2.

kgpt2 tokenises everything (shards, evaluation, prompts, the demo) with the
model's own vocabulary and merges. When they are GPT-2-shaped (token id ==
merge rank, as in OpenAI's files) the engine is `tiktoken`, OpenAI's own BPE,
which is the reference and several times faster; otherwise (a BPE trained
here, whose ids are not merge ranks) the Hugging Face `tokenizers` package,
which applies the merge list like OpenAI's `encoder.py`. keras-hub 0.32's
`GPT2Tokenizer` does not reproduce OpenAI's encoding
(" 's" -> [220, 338] on its eager path, "\\n\\n" -> [628] on its tf.data path;
see docs/tokenization.md), and both engines here are also faster. The files are
still saved in the form `keras_hub.models.GPT2Tokenizer` loads
(`vocabulary.json` + `merges.txt`), so presets stay valid KerasHub presets.

With OpenAI's files, `Tokenizer.from_files("encoder.json", "vocab.bpe")`
encodes "parkinson 's disease" as [20928, 7899, 705, 82, 4369], as tiktoken
does (tests/test_tokenizer.py). A small BPE trained here works the same way:

    >>> from kgpt2.model.tokenizer import Tokenizer
    >>> tok = Tokenizer.train(["Hello world, hello GPT-2. " * 20], vocab_size=300)
    >>> ids = tok.encode("Hello world")
    >>> len(ids) < len("Hello world"), ids[-1] == tok.encode(" world")[-1], tok.engine
    (True, True, 'tokenizers')
    >>> tok.decode(tok.encode("Hello\\n\\nworld")) == "Hello\\n\\nworld", tok.vocabulary["<|endoftext|>"] == tok.eos_id
    (True, True)
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from kgpt2.errors import UserError
from kgpt2.io import atomic_write_text
from kgpt2.model import tokenizer_protocol
from kgpt2.model.char_tokenizer import CHAR_VOCAB_FILE, CharTokenizer

EOS = "<|endoftext|>"
VOCAB_FILE = "vocabulary.json"  # keras-hub's asset names
MERGES_FILE = "merges.txt"
HF_TOKENIZER_FILE = "tokenizer.json"  # a Hugging Face fast tokenizer


class Tokenizer:
    """Byte-level BPE with GPT-2's pre-tokenisation regex and no prefix space
    (a `kgpt2.model.tokenizer_protocol.Tokenizer` of kind "bpe")."""

    kind = "bpe"

    def __init__(self, vocabulary: dict, merges: list):
        if EOS not in vocabulary:
            raise UserError(f"the tokenizer vocabulary has no '{EOS}' token")
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
        merges = [m for m in merges if m and not m[0].startswith("#version")]
        self.vocabulary = dict(vocabulary)
        self.merges = merges
        hf = HFTokenizer(models.BPE(vocab=self.vocabulary, merges=merges))
        # GPT-2's regex split (use_regex), and no space added in front.
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        self._hf = hf
        self.eos_id = self.vocabulary[EOS]
        self.vocab_size = max(self.vocabulary.values()) + 1
        self._tiktoken = _tiktoken_encoding(self.vocabulary, merges, self.eos_id)

    @property
    def engine(self) -> str:
        """'tiktoken' for GPT-2-shaped vocabularies, else 'tokenizers'."""
        return "tiktoken" if self._tiktoken is not None else "tokenizers"

    # Construction -----------------------------------------------------------
    @classmethod
    def from_files(cls, vocab_path, merges_path) -> "Tokenizer":
        vocab_path, merges_path = Path(vocab_path), Path(merges_path)
        for p in (vocab_path, merges_path):
            if p.is_dir():
                raise UserError(f"tokenizer file '{p}' is a folder, not a file")
            if not p.is_file():
                raise UserError(f"tokenizer file '{p}' does not exist")
        try:
            text = vocab_path.read_text(encoding="utf-8")
            vocab = json.loads(text) if text.strip() else None
        except ValueError as e:  # not JSON, or not text at all (UnicodeDecodeError)
            raise UserError(_damaged(vocab_path, e)) from None
        if not vocab:  # an empty file, {} or []
            raise UserError(f"tokenizer file '{vocab_path}' is empty: it holds no tokens")
        if not isinstance(vocab, dict):
            raise UserError(f"tokenizer file '{vocab_path}' is damaged or not a tokenizer (not a token -> id map)")
        if EOS not in vocab:
            raise UserError(f"tokenizer file '{vocab_path}' has no '{EOS}' token, so it is not a GPT-2 vocabulary")
        try:
            merges = [m for m in merges_path.read_text(encoding="utf-8").splitlines() if m.strip()]
        except ValueError as e:
            raise UserError(_damaged(merges_path, e)) from None
        _check_merges(vocab, merges, merges_path)
        try:
            return cls(vocab, merges)
        except UserError:
            raise
        except Exception as e:  # tokenizers' BPE refuses a merge of tokens the vocabulary lacks (a file cut short)
            raise UserError(f"tokenizer file '{merges_path}' does not fit its vocabulary ({e}); it is damaged (cut "
                            f"short?) or not the merges of '{vocab_path}'") from None

    @classmethod
    def from_dir(cls, directory) -> tokenizer_protocol.Tokenizer:
        """A directory holding vocabulary.json/merges.txt (or vocab.json/merges.txt,
        OpenAI's encoder.json/vocab.bpe, or a Hugging Face tokenizer.json; that file
        itself is also taken), directly or in a KerasHub preset's
        assets/tokenizer/, or a kgpt2 run folder's (its tokenizer/, else its
        preset/). A `char_vocabulary.json` there gives a
        `kgpt2.model.char_tokenizer.CharTokenizer` (same interface) instead."""
        root = Path(directory)
        for d in (root, root / "assets" / "tokenizer", root / "tokenizer", root / "preset" / "assets" / "tokenizer"):
            if (d / CHAR_VOCAB_FILE).is_file():
                return CharTokenizer.from_dir(d)
            for vocab, merges in (
                (VOCAB_FILE, MERGES_FILE),
                ("vocab.json", "merges.txt"),
                ("encoder.json", "vocab.bpe"),
            ):
                if (d / vocab).is_file() and (d / merges).is_file():
                    return cls.from_files(d / vocab, d / merges)
        # transformers >= 5 saves only tokenizer.json (a KerasHub preset's tokenizer.json is its config, not this)
        hf_json = root if root.name == HF_TOKENIZER_FILE else root / HF_TOKENIZER_FILE
        if hf_json.is_file():
            spec = _read_json(hf_json)
            if root.is_file() or (isinstance(spec, dict) and "model" in spec):
                return cls.from_hf_spec(spec, hf_json)
        if not root.exists():  # a typo, or a recipe's relative path read from another folder
            if blocker := next((p for p in root.parents if p.is_file()), None):
                raise UserError(f"tokenizer folder '{root}' cannot exist: '{blocker}' is a file, not a folder")
            where = "" if root.is_absolute() else f" (relative to {Path.cwd()})"
            raise UserError(f"tokenizer folder '{root}' does not exist{where}")
        kind = "is a file, not a folder of tokenizer files" if root.is_file() else "holds no GPT-2 tokenizer files"
        raise UserError(f"'{root}' {kind} (vocabulary.json + merges.txt, vocab.json + merges.txt, OpenAI's "
                        "encoder.json + vocab.bpe or a Hugging Face tokenizer.json) nor a char_vocabulary.json")

    @classmethod
    def from_hf_json(cls, path) -> "Tokenizer":
        """A Hugging Face `tokenizer.json` holding a byte-level BPE (transformers 5 saves only this)."""
        return cls.from_hf_spec(_read_json(path), path)

    @classmethod
    def from_hf_spec(cls, spec, path) -> "Tokenizer":
        """The same from the file's parsed contents (`path` names it in the error)."""
        try:
            model = spec["model"]
            if model.get("type") != "BPE":
                raise KeyError("type")
            _check_merges(model["vocab"], model["merges"], path)
            return cls(model["vocab"], model["merges"])
        except (KeyError, TypeError, AttributeError):
            raise UserError(f"'{path}' is not a byte-level BPE tokenizer.json (GPT-2 style)") from None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> "Tokenizer":
        """Train a byte-level BPE on `texts` (GPT-2 style: 256 byte tokens + merges)."""
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        spec = json.loads(hf.to_str())["model"]
        return cls(spec["vocab"], spec["merges"])

    def save(self, directory) -> Path:
        """Write vocabulary.json + merges.txt (the files GPT2Tokenizer reads)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / VOCAB_FILE, json.dumps(self.vocabulary, ensure_ascii=False))
        lines = ["#version: 0.2"] + [" ".join(m) for m in self.merges]
        atomic_write_text(d / MERGES_FILE, "\n".join(lines) + "\n")
        return d

    # Use --------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        # "<|endoftext|>" inside a text is ordinary text on both engines.
        if self._tiktoken is not None:
            return self._tiktoken.encode_ordinary(text)
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts; both engines spread the batch over the cores."""
        if self._tiktoken is not None:
            return self._tiktoken.encode_ordinary_batch(texts, num_threads=usable_cores())
        return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]

    def encode_arrays(self, texts: list[str], executor=None) -> list:
        """Encode many texts to numpy int arrays (no Python int lists: fast for shards).

        `executor`: a `concurrent.futures` executor to spread the texts over
        (tiktoken releases the GIL); None encodes in this thread.
        """
        if self._tiktoken is None:
            return [np.asarray(ids, dtype=np.uint32) for ids in self.encode_batch(texts)]
        encode = functools.partial(self._tiktoken.encode_to_numpy, disallowed_special=())
        return list(executor.map(encode, texts)) if executor is not None else [encode(t) for t in texts]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids if int(i) != self.eos_id and int(i) < self.vocab_size]
        return self._hf.decode(ids, skip_special_tokens=False)

    @functools.cached_property  # ~0.1 s for GPT-2's files, asked by every check of a run, shards or checkpoint
    def hash(self) -> str:
        h = hashlib.sha256(json.dumps(self.vocabulary, sort_keys=True).encode())
        h.update("\n".join(" ".join(m) for m in self.merges).encode())
        return h.hexdigest()[:16]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under a container limit)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _tiktoken_encoding(vocabulary: dict, merges: list, eos_id: int):
    """A tiktoken Encoding for GPT-2-shaped BPE files, or None for other vocabularies.

    tiktoken ranks byte strings, so it is exact only when every token's id is
    its merge rank (256 byte tokens in GPT-2's byte order, then the merges in
    order): the check `tiktoken.load.data_gym_to_mergeable_bpe_ranks` makes on
    OpenAI's files, redone here in memory because the vocabulary may not be a file.
    """
    try:
        import tiktoken
    except ImportError:  # pragma: no cover - tiktoken is a dependency
        return None
    # GPT-2's byte <-> character map: printable bytes stand for themselves, the
    # others are chr(256), chr(257), ... in byte order.
    byte_order = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    extra = [b for b in range(256) if b not in byte_order]
    char_to_byte = {chr(b): b for b in byte_order} | {chr(256 + n): b for n, b in enumerate(extra)}
    byte_order += extra
    try:
        ranks = {bytes([b]): i for i, b in enumerate(byte_order)}
        for a, b in merges:
            ranks[bytes(char_to_byte[c] for c in a + b)] = len(ranks)
        ids = {bytes(char_to_byte[c] for c in token): i
               for token, i in vocabulary.items() if token != EOS}
    except KeyError:  # a character outside the byte alphabet: not GPT-2-shaped
        return None
    if ranks != ids or eos_id != len(ranks):
        return None
    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""  # GPT-2's
    return tiktoken.Encoding("kgpt2-gpt2", pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens={EOS: eos_id})


def _check_merges(vocabulary: dict, merges: list, path) -> None:
    """Refuse a merge list that is empty (or only the `#version` line an honest merges.txt starts with) while the
    vocabulary holds tokens only merges make: such a tokenizer would silently encode every byte on its own.
    A vocabulary of single bytes (and end-of-text) needs no merges.

    >>> _check_merges({"a": 0, "ab": 1}, ["#version: 0.2"], "merges.txt")
    Traceback (most recent call last):
    kgpt2.errors.UserError: tokenizer file 'merges.txt' holds no merges (it is empty or only a #version line), but its vocabulary has 1 token made by merges; the file is cut short or not this vocabulary's merges
    """
    if any(m for m in merges if not (isinstance(m, str) and m.startswith("#version"))):
        return
    made = sum(1 for token in vocabulary if len(token) > 1 and token != EOS)
    if made:
        raise UserError(f"tokenizer file '{path}' holds no merges (it is empty or only a #version line), but its "
                        f"vocabulary has {made:,} token{'s' if made > 1 else ''} made by merges; the file is cut "
                        "short or not this vocabulary's merges")


def _damaged(path, e: ValueError) -> str:
    """The sentence for a tokenizer file that does not decode or parse.

    >>> _damaged("v.json", UnicodeDecodeError("utf-8", b"\\x89", 0, 1, "invalid start byte"))
    "tokenizer file 'v.json' is damaged or not a tokenizer (not UTF-8 text)"
    """
    why = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else "not valid JSON"
    return f"tokenizer file '{path}' is damaged or not a tokenizer ({why})"


def _read_json(path):
    """A JSON file's contents, or None when it cannot be read or parsed (the caller says what it expected)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
