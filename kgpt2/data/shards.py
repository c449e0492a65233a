"""Token shards on disk: written once by `prepare`, memory-mapped by everyone else.

A shard set is a directory:

    manifest.json            format, tokenizer hash, splits, content hash, input signature
    <split>.bin              the split's token ids back to back (uint16 when the
                             vocabulary fits), one end-of-text after each article
    <split>.offsets.npy      int64 [num_articles + 1]: article i is tokens[off[i]:off[i+1]]
    <split>.ids.txt          one article id per line, in order

so a stage can take "the next N articles" and a resume can restart at an exact
token. `prepare` streams the source in batches (bounded memory: the text of two
batches plus 8 bytes per article; a long article is encoded in pieces that give
the same ids), encodes them on all cores, writes into a temporary folder and
renames it into place at the end: a failed prepare never leaves a shard set
that looks complete, and only a shard set is ever replaced
(`kgpt2.data.shard_folder` says which `--out` is refused). Re-running it on unchanged
inputs (same files, sizes, mtimes, options, tokenizer) returns the existing
manifest without touching anything; `content_hash` is a hash of the tokens.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from kgpt2.data.shards import prepare, ShardSet
    >>> from kgpt2.tokenizer import Tokenizer
    >>> root = Path(tempfile.mkdtemp())
    >>> articles = [f"Article {i}: the assert statement is a debugging aid." for i in range(40)]
    >>> _ = (root / "corpus.txt").write_text("\\n\\n".join(articles))
    >>> tok = Tokenizer.train(articles, vocab_size=300)
    >>> manifest = prepare(root / "corpus.txt", root / "shards", tok, separator="\\n\\n", progress=False)
    >>> train = ShardSet(root / "shards").split("train")
    >>> train.num_articles + manifest["splits"]["validation"]["num_articles"] + manifest["splits"]["test"]["num_articles"]
    40
    >>> tok.decode(train.article_tokens(0)[:-1]).startswith("Article ")
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zlib
from array import array
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from kgpt2.data.shard_folder import (FORMAT, check_out_folder, clean_leftovers, local_source, os_error_sentence,
                                     publish, read_manifest, temp_folder, write_manifest)
from kgpt2.data.instructions import InstructionDocument
from kgpt2.data.sources import Document, Source, open_source
from kgpt2.errors import UserError
from kgpt2.tokenizer import usable_cores
from kgpt2.tokenizer_protocol import Tokenizer

SPLITS = ("train", "validation", "test")


def _dtype_for(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def assign_split(doc_id: str, seed: int, fractions: tuple[float, float, float]) -> str:
    """Deterministic, streaming split by article: a seeded hash of its id."""
    u = zlib.crc32(f"{seed}:{doc_id}".encode()) / 2**32
    train, val, _ = fractions
    return "train" if u < train else "validation" if u < train + val else "test"


def _input_signature(source: Source, tokenizer: Tokenizer, options: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(options, sort_keys=True).encode())
    h.update(tokenizer.hash.encode())
    h.update(str(source.path).encode())
    for f in source.files():
        st = f.stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


class _SplitWriter:
    """Appends articles to one split's files as they come (nothing held but offsets).

    Instruction data may add a parallel per-token loss-mask file here
    (`<split>.mask.bin`, same offsets) and its name to the split's manifest entry.
    """

    def __init__(self, directory: Path, name: str, dtype, eos_id: int):
        self.name, self.dtype = name, dtype
        self.tokens = open(directory / f"{name}.bin", "wb", buffering=1 << 22)
        self.ids = open(directory / f"{name}.ids.txt", "w", encoding="utf-8")
        self.offsets = array("q", [0])  # 8 bytes per article
        self.hash = hashlib.sha256()
        self.eos = np.asarray([eos_id], dtype=dtype).tobytes()
        self.directory, self.mask = directory, None
        self.target_tokens = 0  # ones in the mask file, counted as it is written

    def add(self, doc_id: str, pieces, mask=None) -> None:
        """Write one article's token ids (arrays or lists, back to back) and an end-of-text.

        `mask` (instruction data): uint8 per token incl. the end-of-text, 1 = a
        training target. The mask file starts at the first masked article;
        tokens before it (and unmasked articles) count as targets.
        """
        n = 1  # tokens of this article, end-of-text included
        for ids in pieces:  # one piece at a time: a huge article is never copied whole
            data = np.asarray(ids).astype(self.dtype, copy=False).tobytes()
            self.tokens.write(data)
            self.hash.update(data)
            n += len(data) // len(self.eos)
        self.tokens.write(self.eos)
        self.hash.update(self.eos)
        if mask is not None and self.mask is None:
            self.mask = open(self.directory / f"{self.name}.mask.bin", "wb")
            self.mask.write(np.ones(self.offsets[-1], dtype=np.uint8).tobytes())
            self.target_tokens = self.offsets[-1]
        if self.mask is not None:
            bits = np.ones(n, dtype=np.uint8) if mask is None else np.asarray(mask, dtype=np.uint8)
            if len(bits) != n:
                raise ValueError(f"mask of {doc_id} has {len(bits)} entries for {n} tokens")
            self.mask.write(bits.tobytes())
            self.hash.update(bits.tobytes())  # a changed mask is changed training data
            self.target_tokens += int(bits.sum())
        self.ids.write(doc_id.replace("\n", " ") + "\n")
        self.offsets.append(self.offsets[-1] + n)

    def close(self) -> dict:
        directory = self.directory
        for f in (self.tokens, self.ids) + ((self.mask,) if self.mask else ()):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        np.save(directory / f"{self.name}.offsets.npy", np.frombuffer(self.offsets, dtype=np.int64))
        info = {
            "tokens": f"{self.name}.bin",
            "offsets": f"{self.name}.offsets.npy",
            "ids": f"{self.name}.ids.txt",
            "num_articles": len(self.offsets) - 1,
            "num_tokens": self.offsets[-1],
            "sha256": self.hash.hexdigest(),
        }
        if self.mask is not None:
            lengths = np.diff(np.frombuffer(self.offsets, dtype=np.int64))
            info.update(mask=f"{self.name}.mask.bin", target_tokens=self.target_tokens,
                        max_example_tokens=int(lengths.max(initial=0)),
                        mean_example_tokens=round(float(lengths.mean()), 1) if len(lengths) else 0.0)
        return info


def prepare(source: str | Source, out_dir, tokenizer: Tokenizer, *, fmt: str | None = None,
            contents: str = "both", splits: str = "auto", fractions=(0.9, 0.05, 0.05),
            seed: int = 1337, batch_docs: int = 256, max_doc_chars: int = 50_000_000,
            progress: bool = True, threads: int | None = None, **source_options) -> dict:
    """Tokenise `source` into a shard set at `out_dir`; return its manifest.

    `splits`: "auto" keeps the source's own splits when it has them and
    splits the rest by article with `fractions`; "hash" always splits by
    `fractions`; "train" puts everything in train; "tail:F" gives the last F
    of each document's characters to validation (nanoGPT). `threads`: encoding
    threads (default: the usable cores).
    """
    tail_fraction(splits)  # "tail:F" is checked here, before any work
    if splits not in ("auto", "hash", "train") and not splits.startswith("tail:"):
        raise UserError(f"unknown splits '{splits}' (one of: auto, hash, train, tail:F)")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(f"split fractions {tuple(fractions)} must be three non-negative numbers summing to 1")
    src = source if isinstance(source, Source) else open_source(
        source, fmt, contents=contents, **source_options)
    local = local_source(src)
    # Resolved: `--out .` gets a real name, and a symlinked --out is replaced where it points.
    out_dir = Path(out_dir).resolve()
    check_out_folder(out_dir, local)
    options = {"format": src.format, "contents": src.contents, "splits": splits,
               "fractions": list(fractions), "seed": seed, "text_column": src.text_column,
               "separator": src.separator, "max_doc_chars": max_doc_chars}
    tmp = temp_folder(out_dir)
    try:
        clean_leftovers(out_dir)  # first: it may put back the previous set a kill left aside
        signature = _input_signature(src, tokenizer, options)
        old = read_manifest(out_dir)
        if old.get("input_signature") == signature:
            return old  # same inputs, same options, same tokenizer: nothing to do
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        try:
            manifest = _write_shards(src, tmp, tokenizer, splits, fractions, seed, batch_docs,
                                     max_doc_chars, progress, threads or usable_cores())
            manifest.update(input_signature=signature, options=options, source=str(src.path))
            write_manifest(tmp, manifest)
            publish(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # ours alone: nothing half-written stays
            raise
    except OSError as e:
        raise UserError(os_error_sentence(e, out_dir, tmp, local)) from None
    return manifest


def tail_fraction(splits: str) -> float | None:
    """F of `splits = "tail:F"` (the validation share), else None."""
    if not splits.startswith("tail:"):
        return None
    try:
        fraction = float(splits[5:])
    except ValueError:
        fraction = -1.0
    if not 0 < fraction < 1:
        raise UserError(f"splits '{splits}' needs a validation fraction between 0 and 1, e.g. tail:0.1")
    return fraction


def split_tail(docs, fraction: float):
    """nanoGPT's split of a plain text: the last `fraction` of each document's
    characters is validation, the rest train (`data[:int(n*0.9)]`, `data[int(n*0.9):]`)."""
    for doc in docs:
        cut = int(len(doc.text) * (1 - fraction))
        for part in (Document(doc.id, doc.text[:cut], "train"),
                     Document(f"{doc.id}:tail", doc.text[cut:], "validation")):
            if part.text:
                yield part



_PIECE_CHARS = 1 << 16  # encoded at once: the tokenizer's memory stays small whatever the article size
_PIECE_SEARCH = 1 << 18  # how far past that a safe cut is looked for before cutting anyway
_SAFE_CUT = re.compile(r"\S[ \t\n\r]")


def encoding_pieces(text: str, size: int = _PIECE_CHARS) -> list[tuple[int, int]]:
    """(start, end) of pieces of `text` whose ids, concatenated, are the ids of the whole.

    Cuts fall between a non-space character and the ASCII whitespace after
    it: GPT-2's pre-tokenizer regex (tiktoken's and `tokenizers`' ByteLevel)
    never puts those two in one pre-token, and BPE merges only within one, so
    such a cut changes no id (tests check this against tiktoken). Python's
    `\S` excludes more characters than the Unicode White_Space class the regex
    uses, so the rule errs safe. A stretch of `size` + 256 K characters with
    no such point is cut there anyway, which may change the ids next to that cut.

        >>> encoding_pieces("one two three", size=4)
        [(0, 7), (7, 13)]
    """
    bounds, start, n = [], 0, len(text)
    while start < n:
        end = start + size
        if end < n:
            m = _SAFE_CUT.search(text, end - 1, min(n, end + _PIECE_SEARCH))
            end = m.start() + 1 if m else end + _PIECE_SEARCH
        bounds.append((start, min(end, n)))
        start = end
    return bounds


_BATCH_CHARS = 8_000_000  # a batch holds at most ~8 MB of text (plus one long document)


def _write_shards(src, tmp, tokenizer, splits, fractions, seed, batch_docs, max_doc_chars, progress,
                  threads):
    from tqdm.auto import tqdm

    dtype = _dtype_for(tokenizer.vocab_size)
    writers = {name: _SplitWriter(tmp, name, dtype, tokenizer.eos_id) for name in SPLITS}
    bar = tqdm(desc=f"prepare {src.path}", unit=" docs", disable=not progress, mininterval=0.5)
    tokens_done = 0
    # Reading (Python, holds the GIL) overlaps with encoding (tiktoken's Rust
    # releases it): batch k is encoded in the pool while batch k+1 is read, so
    # at most two batches are in memory.
    pool = ThreadPoolExecutor(max_workers=threads)
    pending: deque = deque()

    def encode(batch, items):
        """[(document index, ids, loss mask or None)] of `items`; runs in the pool."""
        out = []
        for i, start, end in items:
            d = batch[i]
            if isinstance(d, InstructionDocument):  # prompt and response (or chat turns) encoded apart
                ids, mask = d.encode(tokenizer)
                out.append((i, ids[:-1], mask))  # the writer adds the end-of-text
            else:  # the writer's dtype here: a piece's ids are held in it until written
                ids = tokenizer.encode_arrays([d.text[start:end]])[0]
                out.append((i, np.asarray(ids).astype(dtype, copy=False), None))
        return out

    def submit(batch):
        items = [(i, start, end) for i, d in enumerate(batch)
                 for start, end in ([(0, len(d.text))] if isinstance(d, InstructionDocument)
                                    else encoding_pieces(d.text))]
        step = max(1, -(-len(items) // threads))  # a huge article's pieces spread over the threads too
        futures = [pool.submit(encode, batch, items[k:k + step]) for k in range(0, len(items), step)]
        pending.append((batch, futures))

    def write_oldest():
        nonlocal tokens_done
        batch, futures = pending.popleft()
        encoded: dict = {}  # document index -> ([ids of each piece], mask)
        for future in futures:
            for i, ids, mask in future.result():
                encoded.setdefault(i, ([], mask))[0].append(ids)
        for i, doc in enumerate(batch):
            pieces, mask = encoded.pop(i, ([], None))
            writers[doc.split].add(doc.id, pieces, mask)
            tokens_done += sum(len(ids) for ids in pieces) + 1
        bar.update(len(batch))
        bar.set_postfix(tokens=f"{tokens_done:,}", refresh=False)

    try:
        batch, chars = [], 0
        tail = tail_fraction(splits)
        for doc in split_tail(src, tail) if tail else src:
            if len(doc.text) > max_doc_chars:
                src.stats.skip(f"document over {max_doc_chars:,} characters", doc.id)
                continue
            if splits == "train":
                doc.split = "train"
            elif splits == "hash" or doc.split is None:
                doc.split = assign_split(doc.id, seed, fractions)
            batch.append(doc)
            chars += len(doc.text)
            if len(batch) >= batch_docs or chars >= _BATCH_CHARS:
                submit(batch)
                batch, chars = [], 0
                while len(pending) > 1:
                    write_oldest()
        if batch:
            submit(batch)
        while pending:
            write_oldest()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    split_info = {name: w.close() for name, w in writers.items()}
    if sum(s["num_articles"] for s in split_info.values()) == 0:
        detail = f" ({src.stats.total_skipped} records skipped, e.g. {'; '.join(src.stats.examples[:3])})" \
            if src.stats.total_skipped else ""
        raise UserError(f"source '{src.path}' holds no documents{detail}")
    content = hashlib.sha256("".join(split_info[n]["sha256"] for n in SPLITS).encode())
    return {
        "format": FORMAT,
        "dtype": np.dtype(dtype).name,
        "tokenizer": {"hash": tokenizer.hash, "vocab_size": tokenizer.vocab_size,
                      "eos_id": tokenizer.eos_id},
        "splits": split_info,
        "content_hash": content.hexdigest()[:16],
        "skipped": {"total": src.stats.total_skipped, "by_reason": src.stats.skipped,
                    "examples": src.stats.examples},
    }


class Split:
    """One split of a shard set, memory-mapped."""

    def __init__(self, directory: Path, name: str, info: dict, dtype: str):
        self.name = name
        self.num_articles = info["num_articles"]
        self.num_tokens = info["num_tokens"]
        self.offsets = np.load(directory / info["offsets"])
        path = directory / info["tokens"]
        self.tokens = (np.memmap(path, dtype=dtype, mode="r") if self.num_tokens
                       else np.zeros((0,), dtype=dtype))
        self._ids_path = directory / info["ids"]
        # Instruction shards: uint8 per token, 1 = a training target.
        self.mask = (np.memmap(directory / info["mask"], dtype=np.uint8, mode="r")
                     if info.get("mask") and self.num_tokens else None)

    def article_tokens(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def token_range(self, first_article: int, end_article: int) -> tuple[int, int]:
        return int(self.offsets[first_article]), int(self.offsets[end_article])

    def ids(self) -> list[str]:
        return self._ids_path.read_text(encoding="utf-8").splitlines()


class ShardSet:
    """A prepared shard directory: `ShardSet(dir).split("train")`."""

    def __init__(self, directory):
        self.directory = Path(directory)
        path = self.directory / "manifest.json"
        if not path.is_file():
            raise UserError(f"'{self.directory}' is not a prepared shard set (no manifest.json); run `kgpt2 prepare` first")
        try:
            self.manifest = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"'{path}' is corrupt; run `kgpt2 prepare` again") from None
        if self.manifest.get("format") != FORMAT:
            raise UserError(f"'{self.directory}' was written by another kgpt2 shard format")
        self._check_files()
        self._splits: dict = {}

    def _check_files(self) -> None:
        """One sentence, at open, for a split file that is missing or cut short (not a traceback later)."""
        itemsize = np.dtype(self.manifest["dtype"]).itemsize
        for info in self.manifest["splits"].values():
            expected = {info["offsets"]: None, info["ids"]: None}
            if info["num_tokens"]:
                expected[info["tokens"]] = info["num_tokens"] * itemsize
                if info.get("mask"):
                    expected[info["mask"]] = info["num_tokens"]
            for name, size in expected.items():
                path = self.directory / name
                if not path.is_file():
                    raise UserError(f"shard set '{self.directory}' is missing {name}; run `kgpt2 prepare` again")
                if size is not None and path.stat().st_size != size:
                    raise UserError(f"shard set '{self.directory}' has a damaged {name} ({path.stat().st_size} "
                                    f"bytes, expected {size}); run `kgpt2 prepare` again")

    @property
    def tokenizer_hash(self) -> str:
        return self.manifest["tokenizer"]["hash"]

    def split(self, name: str) -> Split:
        if name not in self.manifest["splits"]:
            raise UserError(f"shard set '{self.directory}' has no split '{name}'")
        if name not in self._splits:
            self._splits[name] = Split(self.directory, name, self.manifest["splits"][name],
                                       self.manifest["dtype"])
        return self._splits[name]

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        if tokenizer.hash != self.tokenizer_hash:
            raise UserError(
                f"shard set '{self.directory}' was tokenised with another tokenizer than the model's; "
                "run `kgpt2 prepare` with the model's preset"
            )
