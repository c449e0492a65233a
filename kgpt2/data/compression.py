"""Compressed corpus files (`corpus.jsonl.gz`, `.bz2`, `.xz`), read as the plain file they hold.

Hub datasets and web dumps often ship JSON Lines or text gzipped; without this,
`corpus.jsonl.gz` was read as a text file of binary bytes ("not UTF-8"). The
standard library's codecs stream them, so a big file is never unpacked to disk.
zstd (`.zst`) has no codec in Python 3.11's standard library: such a file is
refused with the command that unpacks it.

    >>> import gzip, tempfile
    >>> from pathlib import Path
    >>> from kgpt2.data.compression import open_bytes, plain
    >>> path = Path(tempfile.mkdtemp()) / "train.jsonl.gz"
    >>> with gzip.open(path, "wb") as f:
    ...     _ = f.write(b'{"text": "one"}\\n')
    >>> plain(path).name, open_bytes(path).read()
    ('train.jsonl', b'{"text": "one"}\\n')
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from pathlib import Path

from kgpt2.errors import UserError

CODECS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
UNSUPPORTED = {".zst": "zstd -d", ".zip": "unzip", ".7z": "7z x"}
# What a truncated or damaged compressed file raises while it is read (bz2's is an OSError, matched by message).
DAMAGED = (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


def plain(path) -> Path:
    """`path` without its compression suffix: the name that says what the file holds."""
    path = Path(path)
    return path.with_suffix("") if path.suffix.lower() in CODECS else path


def open_bytes(path):
    """`path` opened for reading bytes, decompressed when its suffix names a codec."""
    path = refuse_unsupported(path)
    return CODECS.get(path.suffix.lower(), open)(path, "rb")


def refuse_unsupported(path) -> Path:
    """`path`, or a UserError for an archive kgpt2 cannot stream (zstd, zip, 7z)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in UNSUPPORTED:
        raise UserError(f"'{path}' is a {suffix} archive, which kgpt2 does not read; unpack it first "
                        f"({UNSUPPORTED[suffix]} '{path.name}') and pass the file it holds")
    return path


def is_damaged(error: BaseException) -> bool:
    """Whether `error` is a compressed file that ends early or does not decode."""
    return isinstance(error, DAMAGED) or (isinstance(error, OSError) and "Invalid data stream" in str(error))


def damaged_sentence(path, error: BaseException) -> str:
    return (f"'{path}' is a damaged or truncated {Path(path).suffix} file ({error}); "
            "download or compress it again")
