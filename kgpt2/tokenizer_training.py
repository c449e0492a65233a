"""Train your own tokenizer on a corpus (`kgpt2 tokenizer train`).

A byte-level BPE trained GPT-2 style (HF `tokenizers`), saved as
`vocabulary.json` + `merges.txt` (`keras_hub.models.GPT2Tokenizer(vocabulary=...,
merges=...)` loads them; a preset made from it loads with
`GPT2Tokenizer.from_preset`), or with `char=True` a nanoGPT-style character
vocabulary (`kgpt2.model.char_tokenizer`). `model.tokenizer = DIR` and
`kgpt2 prepare --tokenizer DIR` take either.

    >>> import tempfile
    >>> from kgpt2.tokenizer_training import train_tokenizer
    >>> tok = train_tokenizer("pydoc", tempfile.mkdtemp(), char=True)
    >>> tok.decode(tok.encode("assert x")), tok.eos_id == tok.vocab_size - 1
    ('assert x', True)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from kgpt2.data.sources import open_source
from kgpt2.errors import UserError
from kgpt2.io import new_folder, refuse_used_folder
from kgpt2.model.char_tokenizer import CHAR_VOCAB_FILE, CharTokenizer
from kgpt2.model.tokenizer import MERGES_FILE, VOCAB_FILE
from kgpt2.model.tokenizer import Tokenizer as BPETokenizer
from kgpt2.model.tokenizer_protocol import Tokenizer

TOKENIZER_FILES = (VOCAB_FILE, MERGES_FILE, CHAR_VOCAB_FILE)  # what a saved tokenizer of either kind holds


def _texts(source: str, fmt: str | None = None):
    src = open_source(source, fmt)
    texts = [doc.text for doc in src]
    if texts:
        return texts
    blank = src.stats.skipped.get("empty document", 0)
    if blank and blank == src.stats.total_skipped:
        # nanoGPT would make a vocabulary of these (sorted(set(text)): "\n" alone); here `prepare` skips blank
        # documents too, so such a tokenizer would encode nothing it is trained or prepared on
        raise UserError(f"source '{source}' holds no text to train a tokenizer on: its "
                        f"{'document is' if blank == 1 else f'{blank} documents are'} empty or only whitespace "
                        "(newlines, spaces), and `kgpt2 prepare` skips such documents, so the tokenizer would have "
                        "nothing to encode")
    raise UserError(f"source '{source}' holds no text to train a tokenizer on{src.stats.summary()}")


def train_tokenizer(source: str, out_dir, vocab_size: int = 0, *, char: bool = False,
                    fmt: str | None = None, min_frequency: int = 2) -> Tokenizer:
    """Train a tokenizer on `source` and save it to `out_dir`; return it.

    BPE: `vocab_size` tokens in all (256 bytes + end-of-text + merges), saved
    as the vocabulary.json + merges.txt that KerasHub's GPT2Tokenizer reads.
    Char: every distinct character plus end-of-text; `vocab_size` is ignored.
    `out_dir` must be new, empty, or hold this very tokenizer already (a re-run
    of the same command): shards and presets were made with the tokenizer there,
    so another one never replaces it. It appears whole or not at all.
    """
    if not str(out_dir):  # Path("") is the working folder: name the empty --out instead
        refuse_used_folder(out_dir, "tokenizer")
    out_dir = Path(out_dir)
    if not char and vocab_size < 258:
        raise UserError(f"a byte-level BPE needs --vocab-size of at least 258 (256 bytes, end-of-text, a merge), got {vocab_size}")
    holds_a_tokenizer = out_dir.is_dir() and any(p.name in TOKENIZER_FILES for p in out_dir.iterdir())
    if holds_a_tokenizer:  # one this command cannot make again is refused before the training (minutes), not after
        _refuse_unlike(out_dir, char, vocab_size)
    else:  # a file, or a folder of other files: refused before the training, too
        refuse_used_folder(out_dir, "tokenizer")
        _refuse_unwritable(out_dir)
    texts = _texts(source, fmt)
    if char:
        tokenizer = CharTokenizer.train(texts)
    else:
        tokenizer = BPETokenizer.train(texts, vocab_size=vocab_size, min_frequency=min_frequency)
    _save_new(tokenizer, out_dir)
    return tokenizer


def _refuse_unwritable(out_dir: Path) -> None:
    """The folder the tokenizer will be written in must take files: found out before the training, not after."""
    folder = out_dir.absolute().parent
    while not folder.exists():  # created by the save (parents too)
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"could not write the tokenizer to '{out_dir}': '{folder}' is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):  # permissions, or a read-only file system (EROFS)
        raise UserError(f"could not write the tokenizer to '{out_dir}': folder '{folder}' is not writable")


def _refuse_unlike(out_dir: Path, char: bool, vocab_size: int) -> None:
    """The tokenizer in `out_dir` cannot be what this command makes: another kind, or a BPE of more tokens than
    asked (a corpus may give fewer, never more). Anything else is compared file by file after the training."""
    held_char = (out_dir / CHAR_VOCAB_FILE).is_file()
    if held_char == char and (char or _held_size(out_dir) <= vocab_size):
        return
    held = "a character tokenizer" if held_char else f"a byte-level BPE of {_held_size(out_dir):,} tokens"
    asked = "a character tokenizer" if char else f"a byte-level BPE of {vocab_size:,} tokens"
    raise UserError(f"tokenizer target '{out_dir}' already holds another tokenizer ({held}, not {asked}; shards and "
                    "presets may have been made with it); choose a new directory")


def _held_size(out_dir: Path) -> int:
    """Tokens in a saved BPE's vocabulary.json; unreadable: more than any size (the files are not this command's)."""
    try:
        return len(json.loads((out_dir / VOCAB_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return 1 << 62


def _save_new(tokenizer: Tokenizer, out_dir: Path) -> None:
    """Save into a new folder; a used one is left as it is if it holds exactly these files, else refused."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save(tmp)
            same = sorted(p.name for p in out_dir.iterdir()) == sorted(p.name for p in Path(tmp).iterdir()) and all(
                (out_dir / p.name).read_bytes() == p.read_bytes() for p in Path(tmp).iterdir())
        if same:
            return
        raise UserError(f"tokenizer target '{out_dir}' already holds another tokenizer (shards and presets may have "
                        "been made with it); choose a new directory")
    with new_folder(out_dir, "tokenizer") as tmp:
        tokenizer.save(tmp)
