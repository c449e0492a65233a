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
the same ids), encodes them on all cores (`kgpt2.data.shard_writer`), writes
into a temporary folder and renames it into place at the end: a failed prepare never leaves a shard set
that looks complete, and only a shard set is ever replaced
(`kgpt2.data.shard_folder` says which `--out` is refused). Re-running it on unchanged
inputs (same files, sizes, mtimes, options, tokenizer) returns the existing
manifest without touching anything; `content_hash` is a hash of the tokens.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from kgpt2.data.shards import prepare, ShardSet
    >>> from kgpt2.model.tokenizer import Tokenizer
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
import logging
import shutil
from pathlib import Path

import numpy as np

from kgpt2.data.records import unnamed_rows_note
from kgpt2.data.shard_folder import (
    FORMAT,
    PrepareLock,
    check_out_folder,
    clean_leftovers,
    local_source,
    os_error_sentence,
    publish,
    read_manifest,
    resolved_out,
    temp_folder,
    write_manifest,
)
from kgpt2.data.shard_writer import assign_split, encoding_pieces, tail_fraction, write_shards  # noqa: F401
from kgpt2.data.sources import Source, open_source, reading_line
from kgpt2.errors import UserError
from kgpt2.model.tokenizer import usable_cores
from kgpt2.model.tokenizer_protocol import Tokenizer

log = logging.getLogger("kgpt2")


def _input_signature(source: Source, tokenizer: Tokenizer, options: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(options, sort_keys=True).encode())
    h.update(tokenizer.hash.encode())
    h.update(str(source.path).encode())
    for f in source.list_files():  # the list the rest of this prepare reads
        st = f.stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


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
    out_dir = resolved_out(out_dir)  # `--out .` gets a real name, a symlinked --out is replaced where it points
    check_out_folder(out_dir, local)
    options = {"format": src.format, "contents": src.contents, "splits": splits,
               "fractions": list(fractions), "seed": seed, "text_column": src.text_column,
               "separator": src.separator, "max_doc_chars": max_doc_chars}
    tmp = temp_folder(out_dir)
    try:
        signature = _input_signature(src, tokenizer, options)
        if old := _unchanged(out_dir, signature):
            clean_leftovers(out_dir)  # dead prepares' temp folders and lock file (the set itself is in place)
            return old  # made from these very inputs: nothing to write, so no lock to take (a read-only disk is fine)
        with PrepareLock(out_dir):  # one prepare into a folder at a time, from the cleanup to the publish
            clean_leftovers(out_dir)  # first: it may put back the previous set a kill left aside
            if old := _unchanged(out_dir, signature):
                return old  # same inputs, same options, same tokenizer: nothing to do
            for note in (reading_line(src), unnamed_rows_note(src)):  # said before the progress bar starts
                if note:
                    log.info(note)
            tmp.mkdir()
            try:
                manifest = write_shards(src, tmp, tokenizer, splits, fractions, seed, batch_docs,
                                        max_doc_chars, progress, threads or usable_cores())
                manifest.update(input_signature=signature, options=options, source=str(src.path))
                write_manifest(tmp, manifest)
                publish(tmp, out_dir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # ours alone: nothing half-written stays
                raise
    except OSError as e:
        raise UserError(os_error_sentence(e, out_dir, tmp, local)) from None
    if note := empty_splits_note(manifest):
        log.warning("%s", note)
    return manifest


def _unchanged(out_dir: Path, signature: str) -> dict | None:
    """The manifest of the shard set at `out_dir` when it was made from these very inputs and its split files are
    all there, whole; else None. A set with a split file deleted or cut short is written again: the error
    opening it says "run `kgpt2 prepare` again", which otherwise did nothing."""
    old = read_manifest(out_dir)
    if old.get("input_signature") != signature:
        return None
    try:
        ShardSet(out_dir)
    except UserError:
        return None
    return old


# From this many documents, splitting by article fills each split (5% of 20 is one): a source that named its one
# split is told to split by article, not to cut its documents' text (tail:F) or find more.
SPLIT_BY_ARTICLE_FROM = 20


def empty_splits_note(manifest: dict) -> str | None:
    """What an empty split will mean, and how to fill it (None when all three hold articles, or the set was asked
    to be all train). One long text (a novel, a corpus in one file) is one document, and documents are what "auto"
    and "hash" split: it lands whole in one split.

    >>> print(empty_splits_note({"options": {"splits": "auto"}, "splits": {"train": {"num_articles": 0},
    ...       "validation": {"num_articles": 0}, "test": {"num_articles": 1}}}))
    train and validation hold no articles (1 document in all, each split whole): there is nothing to train on and training would report no validation loss; prepare again with --splits tail:0.1 to hold out the last 10% of each document's text, or from more documents
    """
    splits = manifest.get("options", {}).get("splits", "auto")
    if splits == "train" or splits.startswith("tail:"):  # asked for: all train, or train + validation (nanoGPT)
        return None
    counts = {name: info["num_articles"] for name, info in manifest["splits"].items()}
    empty = [name for name in ("train", "validation", "test") if counts.get(name, 0) == 0]
    n = sum(counts.values())
    if not empty or not n:
        return None
    what = {"train": "there is nothing to train on", "validation": "training would report no validation loss",
            "test": "`kgpt2 evaluate` has nothing to score"}
    head = f"{' and '.join(empty)} hold{'s' if len(empty) == 1 else ''} no articles ({n:,} document{'s' * (n != 1)}"
    named = manifest.get("source_splits", [])
    if splits == "auto" and named and n >= SPLIT_BY_ARTICLE_FROM:  # e.g. one file called train.jsonl
        shares = manifest.get("options", {}).get("fractions", (0.9, 0.05, 0.05))
        fractions = "/".join(f"{100 * f:g}" for f in shares)
        return (f"{head} in all, in the split{'s' if len(named) > 1 else ''} the source names: {', '.join(named)}): "
                f"{' and '.join(what[e] for e in empty)}; --splits auto keeps a source's own splits (a file or folder "
                f"called train, an hf: dataset's split), so prepare again with --splits hash to split the {n:,} "
                f"documents by article ({fractions}% train/validation/test)")
    return (f"{head} in all, each split whole): {' and '.join(what[e] for e in empty)}; prepare "
            "again with --splits tail:0.1 to hold out the last 10% of each document's text, or from more documents")


class Split:
    """One split of a shard set, memory-mapped."""

    def __init__(self, directory: Path, name: str, info: dict, dtype: str):
        self.name = name
        self.num_articles = info["num_articles"]
        self.num_tokens = info["num_tokens"]
        self.offsets = _load_offsets(directory, info)
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


def _load_offsets(directory: Path, info: dict) -> np.ndarray:
    """A split's article offsets, checked: cut short or edited in place, they would otherwise give a numpy
    traceback or silently wrong (negative) article lengths. One vectorised pass over one int per article."""
    name = info["offsets"]
    try:
        offsets = np.load(directory / name, allow_pickle=False)
        ok = (offsets.ndim == 1 and offsets.dtype.kind in "iu" and len(offsets) == info["num_articles"] + 1
              and offsets[0] == 0 and offsets[-1] == info["num_tokens"] and bool(np.all(np.diff(offsets) >= 0)))
    except (OSError, ValueError, EOFError):  # a truncated or foreign file; ValueError covers numpy's reads
        ok = False
    if not ok:
        raise UserError(f"shard set '{directory}' has a damaged {name}; run `kgpt2 prepare` again")
    return offsets


class ShardSet:
    """A prepared shard directory: `ShardSet(dir).split("train")`."""

    def __init__(self, directory):
        self.directory = Path(directory)
        path = self.directory / "manifest.json"
        if not path.is_file():
            raise UserError(f"'{self.directory}' is not a prepared shard set (no manifest.json); run `kgpt2 prepare` first")
        try:
            self.manifest = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:  # not JSON, or not text at all (UnicodeDecodeError)
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
            raise UserError(f"shard set '{self.directory}' has no split '{name}' (it has: "
                            f"{', '.join(self.manifest['splits'])})")
        if name not in self._splits:
            self._splits[name] = Split(self.directory, name, self.manifest["splits"][name],
                                       self.manifest["dtype"])
        return self._splits[name]

    def check_tokenizer(self, tokenizer: Tokenizer, remedy: str = "run `kgpt2 prepare` with the model's preset") -> None:
        """`remedy`: what makes shards the model can train on (kgpt2.model.models.prepare_hint names the command)."""
        if tokenizer.hash != self.tokenizer_hash:
            raise UserError(f"shard set '{self.directory}' was tokenised with another tokenizer than the model's; {remedy}")
