"""Scientific-paper readers: scientific_papers / MemSum JSON Lines, `hf:` datasets, SumPubMed folders.

Each yields `Document`s whose text is the abstract and/or the body
(`contents`), sentences one per line with the `<S>` tags stripped.

    >>> from kgpt2.data.papers import paper_text
    >>> record = {"article_text": ["<S> Body one. </S>"], "abstract_text": ["<S> Short. </S>"]}
    >>> print(paper_text(record, "both"))
    Short.
    <BLANKLINE>
    Body one.
"""

from __future__ import annotations

import re
from pathlib import Path

from kgpt2.data.compression import plain
from kgpt2.data.documents import Document
from kgpt2.data.records import jsonl_records, load_hf
from kgpt2.errors import UserError

SPLIT_NAMES = {"train": "train", "val": "validation", "valid": "validation",
               "validation": "validation", "test": "test"}
BODY_KEYS = ("article_text", "article", "text")
ABSTRACT_KEYS = ("abstract_text", "abstract", "summary")
_SENT_TAGS = re.compile(r"\s*</?S>\s*")
_SECTION_HEADER = re.compile(r"^[A-Z][A-Z &/-]*$")  # SumPubMed's BACKGROUND/RESULTS/...


def _join(sentences, where: str) -> str:
    """Sentences (a list, or one string) as text: <S>/</S> stripped, one per line."""
    if sentences is None:
        return ""
    if isinstance(sentences, str):
        return _SENT_TAGS.sub(" ", sentences).strip()
    if not isinstance(sentences, (list, tuple)) or not all(isinstance(s, str) for s in sentences):
        raise UserError(f"{where}: expected a string or a list of strings, got {type(sentences).__name__}")
    return "\n".join(_SENT_TAGS.sub(" ", s).strip() for s in sentences if s and s.strip())


def _first_key(record: dict, keys):
    return next((record[k] for k in keys if k in record), None)


def paper_text(record: dict, contents: str, where: str = "record") -> str:
    """Body and/or abstract (abstract first) of one scientific_papers-style record."""
    body = _join(_first_key(record, BODY_KEYS), where) if contents != "abstract" else ""
    abstract = _join(_first_key(record, ABSTRACT_KEYS), where) if contents != "body" else ""
    return "\n\n".join(p for p in (abstract, body) if p)


def read_papers(src):
    for path in src.files():
        stem = plain(path).stem  # train.jsonl.gz is the train split
        split = SPLIT_NAMES.get(stem.lower())
        for lineno, record in jsonl_records(path, src.stats):
            where = f"{path}:{lineno}"
            if not set(record) & set(BODY_KEYS + ABSTRACT_KEYS):
                raise UserError(f"{where}: not a scientific_papers record (expected article_text/abstract_text, "
                                f"article/abstract or text/summary; found {', '.join(sorted(record)) or 'no keys'})")
            doc_id = str(record.get("article_id") or record.get("id") or f"{stem}:{lineno}")
            yield Document(doc_id, paper_text(record, src.contents, where), split, where)


def read_hf(src):
    """`hf:<id>[:<config>]` or a local parquet/arrow file, streamed by `datasets`."""
    path = where = str(src.path)
    splits = load_hf(path)
    for split_name, rows in splits.items():
        split = SPLIT_NAMES.get(split_name.lower()) if path.startswith("hf:") else None
        for i, row in enumerate(rows):
            row_where = f"{where} [{split_name} row {i + 1}]"  # 1-based, as file:line is (the id keeps i)
            if i == 0 and not set(row) & set(BODY_KEYS + ABSTRACT_KEYS):
                raise UserError(f"{row_where}: expected article/abstract columns, found {', '.join(row)}")
            doc_id = str(row.get("article_id") or row.get("id") or f"{split_name}:{i}")
            yield Document(doc_id, paper_text(row, src.contents, row_where), split, row_where)


def read_sumpubmed(src):
    """SumPubMed: body = line_text/text_<i>.txt, abstract = abstract/abstract_<i>.txt,
    section headers (BACKGROUND, RESULTS, CONCLUSIONS) dropped; id sumpubmed_<i>."""
    root = Path(src.path)
    numbered = sorted((int(m.group(1)), f) for f in src.files()
                      if f.parent.name == "line_text" and (m := re.fullmatch(r"text_(\d+)\.txt", f.name)))
    if not numbered:
        raise UserError(f"'{root}/line_text' holds no text_<i>.txt files (SumPubMed layout)")
    for i, body_path in numbered:
        paths = {"abstract": [root / "abstract" / f"abstract_{i}.txt"], "body": [body_path],
                 "both": [root / "abstract" / f"abstract_{i}.txt", body_path]}[src.contents]
        parts = []
        for path in paths:
            if not path.is_file():
                continue  # an article without an abstract file: body only
            try:
                parts.append(_without_headers(path.read_text(encoding="utf-8")))
            except UnicodeDecodeError as e:
                line = e.object[:e.start].count(b"\n") + 1
                src.stats.skip("not UTF-8", f"{path}:{line}")
                break
        else:
            yield Document(f"sumpubmed_{i}", "\n\n".join(p for p in parts if p), where=str(body_path))


def _without_headers(text: str) -> str:
    lines = (line.strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line and not _SECTION_HEADER.match(line))
