"""Token shards on disk: written once by `prepare`, memory-mapped by everyone else.

A shard set is a directory:

    manifest.json            format, tokenizer hash, splits, content hash, input signature
    <split>.bin              the split's token ids back to back (uint16 when the
                             vocabulary fits), one end-of-text after each article
    <split>.offsets.npy      int64 [num_articles + 1]: article i is tokens[off[i]:off[i+1]]
    <split>.ids.txt          one article id per line, in order

so a stage can take "the next N articles" and a resume can restart at an exact
token. `prepare` streams the source in batches (bounded memory), writes into a
temporary directory and renames it into place at the end: a failed prepare
never leaves a shard set that looks complete.

    >>> from kgpt2.data.shards import prepare, ShardSet
    >>> # prepare("pydoc", "data/pydoc-shards", tokenizer)
    >>> # ShardSet("data/pydoc-shards").split("train").num_articles
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np

from kgpt2.data.sources import Source, open_source
from kgpt2.errors import UserError
from kgpt2.tokenizer import Tokenizer

FORMAT = "kgpt2-shards/1"
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
    def __init__(self, directory: Path, name: str, dtype):
        self.name, self.dtype = name, dtype
        self.tokens = open(directory / f"{name}.bin", "wb")
        self.ids = open(directory / f"{name}.ids.txt", "w", encoding="utf-8")
        self.offsets = [0]
        self.hash = hashlib.sha256()

    def add(self, doc_id: str, ids: list[int], eos_id: int) -> None:
        arr = np.asarray(ids + [eos_id], dtype=self.dtype)
        data = arr.tobytes()
        self.tokens.write(data)
        self.hash.update(data)
        self.ids.write(doc_id.replace("\n", " ") + "\n")
        self.offsets.append(self.offsets[-1] + len(arr))

    def close(self, directory: Path) -> dict:
        for f in (self.tokens, self.ids):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        np.save(directory / f"{self.name}.offsets.npy", np.asarray(self.offsets, dtype=np.int64))
        return {
            "tokens": f"{self.name}.bin",
            "offsets": f"{self.name}.offsets.npy",
            "ids": f"{self.name}.ids.txt",
            "num_articles": len(self.offsets) - 1,
            "num_tokens": self.offsets[-1],
            "sha256": self.hash.hexdigest(),
        }


def prepare(source: str | Source, out_dir, tokenizer: Tokenizer, *, fmt: str | None = None,
            contents: str = "both", splits: str = "auto", fractions=(0.9, 0.05, 0.05),
            seed: int = 1337, batch_docs: int = 256, max_doc_chars: int = 50_000_000,
            progress: bool = True, **source_options) -> dict:
    """Tokenise `source` into a shard set at `out_dir`; return its manifest.

    `splits`: "auto" keeps the source's own splits when it has them and
    splits the rest by article with `fractions`; "hash" always splits by
    `fractions`; "train" puts everything in train.
    """
    src = source if isinstance(source, Source) else open_source(
        source, fmt, contents=contents, **source_options)
    out_dir = Path(out_dir)
    options = {"format": src.format, "contents": src.contents, "splits": splits,
               "fractions": list(fractions), "seed": seed, "text_column": src.text_column,
               "separator": src.separator}
    signature = _input_signature(src, tokenizer, options)
    existing = out_dir / "manifest.json"
    if existing.is_file():
        try:
            old = json.loads(existing.read_text())
            if old.get("input_signature") == signature:
                return old  # same inputs, same options, same tokenizer: nothing to do
        except json.JSONDecodeError:
            pass
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        manifest = _write_shards(src, tmp, tokenizer, splits, fractions, seed, batch_docs,
                                 max_doc_chars, progress)
        manifest.update(input_signature=signature, options=options, source=str(src.path))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if out_dir.exists():
            old_dir = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.rename(out_dir, old_dir)
            os.rename(tmp, out_dir)
            shutil.rmtree(old_dir, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write_shards(src, tmp, tokenizer, splits, fractions, seed, batch_docs, max_doc_chars, progress):
    from tqdm.auto import tqdm

    dtype = _dtype_for(tokenizer.vocab_size)
    writers = {name: _SplitWriter(tmp, name, dtype) for name in SPLITS}
    bar = tqdm(desc=f"prepare {src.path}", unit=" docs", disable=not progress, mininterval=0.5)
    tokens_bar = 0
    batch: list = []

    def flush():
        nonlocal tokens_bar
        for doc, ids in zip(batch, tokenizer.encode_batch([d.text for d in batch])):
            writers[doc.split].add(doc.id, ids, tokenizer.eos_id)
            tokens_bar += len(ids) + 1
        bar.update(len(batch))
        bar.set_postfix(tokens=f"{tokens_bar:,}", refresh=False)
        batch.clear()

    for doc in src:
        if len(doc.text) > max_doc_chars:
            src.stats.skip(f"document over {max_doc_chars:,} characters", doc.id)
            continue
        if splits == "train":
            doc.split = "train"
        elif splits == "hash" or doc.split is None:
            doc.split = assign_split(doc.id, seed, fractions)
        batch.append(doc)
        if len(batch) >= batch_docs:
            flush()
    if batch:
        flush()
    bar.close()
    split_info = {name: w.close(tmp) for name, w in writers.items()}
    if sum(s["num_articles"] for s in split_info.values()) == 0:
        detail = f" ({src.stats.total_skipped} records skipped: {src.stats.examples[:3]})" if src.stats.total_skipped else ""
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
        self._splits: dict = {}

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
