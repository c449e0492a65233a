"""Writing a shard set's split files: documents split, encoded on all cores, appended as they come.

`prepare` (kgpt2.data.shards) streams a source through `write_shards` into a
temporary folder: each document gets its split (the source's own, a seeded
hash of its id, or the tail of the text), is cut into pieces whose ids
concatenate to the whole document's (`encoding_pieces`), encoded in a thread
pool one batch ahead of the writer, and appended by a `SplitWriter` to
`<split>.bin` / `.ids.txt` (+ `.mask.bin` for instruction data), offsets
kept in memory at 8 bytes per article.

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from kgpt2.data.shard_writer import SplitWriter, assign_split
    >>> folder = Path(tempfile.mkdtemp())
    >>> writer = SplitWriter(folder, "train", np.uint16, eos_id=0)
    >>> writer.add("a1", [[5, 6, 7]]); writer.add("a2", [[8]])
    >>> info = writer.close()
    >>> info["num_articles"], info["num_tokens"], sorted(p.name for p in folder.iterdir())
    (2, 6, ['train.bin', 'train.ids.txt', 'train.offsets.npy'])
    >>> assign_split("pmid-1", seed=1337, fractions=(1.0, 0.0, 0.0))
    'train'
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import time
import zlib
from array import array
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from kgpt2.data.instructions import InstructionDocument
from kgpt2.data.shard_folder import FORMAT
from kgpt2.data.sources import Document
from kgpt2.errors import UserError
from kgpt2.model.char_tokenizer import UnknownCharacter
from kgpt2.model.tokenizer_protocol import Tokenizer
from kgpt2.reports import counted
from kgpt2.training import pace

log = logging.getLogger("kgpt2")
SPLITS = ("train", "validation", "test")


def dtype_for(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def assign_split(doc_id: str, seed: int, fractions: tuple[float, float, float]) -> str:
    """Deterministic, streaming split by article: a seeded hash of its id."""
    u = zlib.crc32(f"{seed}:{doc_id}".encode()) / 2**32
    train, val, _ = fractions
    return "train" if u < train else "validation" if u < train + val else "test"


class SplitWriter:
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
    r"""(start, end) of pieces of `text` whose ids, concatenated, are the ids of the whole.

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


def write_shards(src, folder: Path, tokenizer: Tokenizer, splits, fractions, seed, batch_docs, max_doc_chars,
                 progress, threads) -> dict:
    """Tokenise the documents of `src` into the split files in `folder`; the shard set's manifest
    (without what `prepare` adds: input signature, options, source)."""
    dtype = dtype_for(tokenizer.vocab_size)
    writers = {name: SplitWriter(folder, name, dtype, tokenizer.eos_id) for name in SPLITS}
    bar, started, docs_done = _progress_bar(src, progress), time.monotonic(), 0
    in_log = progress and bar.disable  # read now: closing a bar disables it
    # the bar's stand-in in a log: a line about once a minute (no total under tail:F, which cuts each document in two)
    lines = LogLines(src.path, None if tail_fraction(splits) else _documents_in(src)) if in_log else None
    # Reading (Python, holds the GIL) overlaps with encoding (tiktoken's Rust
    # releases it): batch k is encoded in the pool while batch k+1 is read, so
    # at most two batches are in memory.
    pool = ThreadPoolExecutor(max_workers=threads)
    tokens_done = 0
    try:
        named: set[str] = set()  # the splits the source names itself, kept under "auto" (a train.jsonl, an hf: split)
        batches = _batches(_documents(src, splits, fractions, seed, max_doc_chars, named), batch_docs)
        for batch, encoded in _encoded_in_turn(pool, batches, partial(_encode, tokenizer, dtype), threads):
            tokens_done += _write_batch(writers, batch, encoded)
            docs_done += len(batch)
            bar.update(len(batch))
            bar.set_postfix(tokens=f"{tokens_done:,}", refresh=False)
            if lines:
                lines.update(docs_done, tokens_done)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    manifest = _manifest(src, tokenizer, dtype, {name: w.close() for name, w in writers.items()})
    if in_log:  # a log instead of the bar: one plain line, once the shards are written (an error comes alone)
        log.info("prepare %s: %s, %s in %.1f s", src.path, counted(docs_done, "document"),
                 counted(tokens_done, "token"), time.monotonic() - started)
    return manifest | ({"source_splits": sorted(named)} if named else {})  # what an empty split's note says


def _progress_bar(src, progress: bool):
    """tqdm's bar on a terminal or in a notebook, as `kgpt2 train` picks Keras' bar; in a log (`> log.txt 2>&1`,
    nohup, a pipe) its carriage-return redraws are fragments, so it is off there and `write_shards` says one line."""
    from tqdm.auto import tqdm

    stderr = sys.stderr
    interactive = bool(stderr and stderr.isatty()) or "ipykernel" in sys.modules
    return tqdm(desc=f"prepare {src.path}", unit=" docs", disable=not (progress and interactive), mininterval=0.5)


class LogLines:
    """"prepare <source>: N[ of M] documents, T tokens written, R tokens/s[, about D min left]" about once a
    minute while prepare writes to a log, where tqdm's bar is off: a long prepare was silent until its last line.
    When a line is due is train's `Pace` (kgpt2.training.pace); the time left only where `total`, the
    number of documents, is known before reading (a folder of one document per file, SumPubMed).

        >>> lines, clock = [], iter([0.0, 5.0, 65.0]).__next__
        >>> p = LogLines("notes.txt", None, say=lines.append, clock=clock)
        >>> p.update(1, 1_000); p.update(40, 121_000)
        >>> lines
        ['prepare notes.txt: 40 documents, 121,000 tokens written, 2,000 tokens/s']
    """

    def __init__(self, name, total: int | None, say=log.info, clock=time.monotonic):
        self.name, self.total, self.say, self.pace = name, total, say, pace.Pace(clock)

    def update(self, docs: int, tokens: int) -> None:
        """After each batch written, with the documents and tokens written so far."""
        rate = self.pace.due(tokens, lambda done, since: since >= pace.EVERY_S)
        if rate is None:
            return
        of = f" of {self.total:,}" if self.total else ""
        line = f"prepare {self.name}: {docs:,}{of} documents, {tokens:,} tokens written, {rate:,.0f} tokens/s"
        if self.total and rate:  # the documents left at the mean tokens per document so far
            line += f", about {pace.duration(max(self.total - docs, 0) * tokens / docs / rate)} left"
        self.say(line)


def _documents_in(src) -> int | None:
    """How many documents `src` holds, where its files say so without reading them; else None."""
    if src.format == "sumpubmed":  # its files: a text (line_text/) and an abstract per article
        return sum(f.parent.name == "line_text" for f in src.files())
    return len(src.files()) if src.format == "folder" and not src.separator else None


def _documents(src, splits, fractions, seed, max_doc_chars, named: set):
    """The documents of `src` to write, each with its split; a document over `max_doc_chars` is skipped and counted."""
    tail = tail_fraction(splits)
    for doc in split_tail(src, tail) if tail else src:
        if len(doc.text) > max_doc_chars:
            src.stats.skip(f"document over {max_doc_chars:,} characters", doc.where or doc.id)
            continue
        if splits == "train":
            doc.split = "train"
        elif splits == "hash" or doc.split is None:
            doc.split = assign_split(doc.id, seed, fractions)
        elif splits == "auto":
            named.add(doc.split)
        yield doc


def _batches(docs, batch_docs: int):
    """Lists of at most `batch_docs` documents and about `_BATCH_CHARS` characters."""
    batch, chars = [], 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc.text)
        if len(batch) >= batch_docs or chars >= _BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _encode(tokenizer: Tokenizer, dtype, batch, items) -> list:
    """[(document index, ids, loss mask or None)] of `items` (index, start, end); runs in the pool."""
    out = []
    for i, start, end in items:
        d = batch[i]
        try:
            if isinstance(d, InstructionDocument):  # prompt and response (or chat turns) encoded apart
                ids, mask = d.encode(tokenizer)
                out.append((i, ids[:-1], mask))  # the writer adds the end-of-text
            else:  # the writer's dtype here: a piece's ids are held in it until written
                ids = tokenizer.encode_arrays([d.text[start:end]])[0]
                out.append((i, np.asarray(ids).astype(dtype, copy=False), None))
        except UnknownCharacter as e:  # a character tokenizer trained on other text: say where, and what to do
            raise e.for_prepare(d.where or d.id) from None
    return out


def _encoded_in_turn(pool, batches, encode, threads: int):
    """(batch, {document index: ([ids of each piece], mask)}) for each batch in order; the next batch is
    encoding in `pool` while the caller writes this one."""
    pending: deque = deque()
    for batch in batches:
        items = [(i, start, end) for i, d in enumerate(batch)
                 for start, end in ([(0, len(d.text))] if isinstance(d, InstructionDocument)
                                    else encoding_pieces(d.text))]
        step = max(1, -(-len(items) // threads))  # a huge article's pieces spread over the threads too
        pending.append((batch, [pool.submit(encode, batch, items[k:k + step]) for k in range(0, len(items), step)]))
        while len(pending) > 1:
            yield _collected(*pending.popleft())
    while pending:
        yield _collected(*pending.popleft())


def _collected(batch, futures) -> tuple[list, dict]:
    encoded: dict = {}
    for future in futures:
        for i, ids, mask in future.result():
            encoded.setdefault(i, ([], mask))[0].append(ids)
    return batch, encoded


def _write_batch(writers: dict, batch, encoded: dict) -> int:
    """Append each document of `batch` to its split's files; the tokens written, end-of-texts included."""
    tokens = 0
    for i, doc in enumerate(batch):
        pieces, mask = encoded.pop(i, ([], None))
        writers[doc.split].add(doc.id, pieces, mask)
        tokens += sum(len(ids) for ids in pieces) + 1
    return tokens


def _manifest(src, tokenizer: Tokenizer, dtype, split_info: dict) -> dict:
    """The shard set's manifest from its splits' entries; a source that gave no document is refused."""
    if sum(s["num_articles"] for s in split_info.values()) == 0:
        raise UserError(f"source '{src.path}' holds no documents{src.stats.summary()}")
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
