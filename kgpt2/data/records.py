"""Structured records: JSON Lines, JSON arrays, tables (CSV/TSV/JSONL/parquet) and `datasets`.

The readers of the `table` format and the record streams the paper and
instruction readers build on. A reader takes a `kgpt2.data.sources.Source`
(its path, text column and stats); bad JSON lines are skipped and counted,
a wrong schema is a `UserError` naming the file and row.

    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from kgpt2.data.documents import SourceStats
    >>> from kgpt2.data.records import jsonl_records
    >>> path = Path(tempfile.mkdtemp()) / "r.jsonl"
    >>> _ = path.write_text(json.dumps({"text": "one"}) + "\\n{broken\\n")
    >>> stats = SourceStats()
    >>> list(jsonl_records(path, stats)), stats.skipped
    ([(1, {'text': 'one'})], {'invalid or truncated JSON': 1})
"""

from __future__ import annotations

import json
from pathlib import Path

from kgpt2.data.compression import open_bytes, plain
from kgpt2.data.documents import Document, SourceStats
from kgpt2.errors import UserError
from kgpt2.hf_configs import unreachable_hub_host

_TABLE_CHUNK_ROWS = 2048


def jsonl_records(path: Path, stats: SourceStats):
    """(line number, dict) for each valid JSON object line; bad lines are counted."""
    with open_bytes(path) as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                stats.skip("not UTF-8", where)
                continue
            except json.JSONDecodeError:
                stats.skip("invalid or truncated JSON", where)
                continue
            if not isinstance(record, dict):
                stats.skip("not a JSON object", where)
                continue
            yield lineno, record


def json_array(path: Path):
    """Records of a JSON array file; None for JSON Lines, which are streamed line by
    line (a non-UTF-8 line skipped and counted there, not the whole file refused)."""
    with open_bytes(path) as f:
        leading = b""  # kept, so an error's line number counts the blank lines before the "["
        while (first := f.read(1)).isspace():
            leading += first
        if first != b"[":
            return None
        text = leading + first + f.read()
    try:
        text = text.decode("utf-8")
    except UnicodeDecodeError as e:
        line = text[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8") from None
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    return None


def json_records(src):
    """(where, record) of a JSON array or JSON Lines file of objects."""
    path = Path(src.path)
    records = json_array(path)
    if records is None:
        for lineno, record in jsonl_records(path, src.stats):
            yield f"{path}:{lineno}", record
        return
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            src.stats.skip("not a JSON object", f"{path} [record {i}]")
            continue
        yield f"{path} [record {i}]", record


def first_record(p: Path):
    """The first JSON object of a JSON array or JSON Lines file, for format detection; None when it holds none.

    Lines that are not UTF-8 JSON are passed over here (the reader skips and
    counts them); a file with no such line at all is refused.
    """
    with open_bytes(p) as f:
        line = f.readline()
        while line and not line.strip():
            line = f.readline()
        if line.lstrip().startswith(b"["):  # a JSON array: look at its first object
            return next(iter(json_array(p)), None)
        bad, first_bad = 0, None
        while line:
            try:
                return json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                bad += bool(line.strip())
                first_bad = first_bad or isinstance(e, UnicodeDecodeError)
                line = f.readline()
    if bad:
        advice = ("it is in another encoding: re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8)" if first_bad
                  else "it is not JSON Lines: pass --format")
        raise UserError(f"none of the {bad} lines of '{p}' is UTF-8 JSON; {advice}")
    return None


def load_hf(path: str, streaming: bool = True):
    """The splits of `hf:<id>[:<config>]` or of a local parquet/arrow file, through `datasets`."""
    try:
        import datasets
    except ImportError:
        raise UserError("reading hf: sources needs the `datasets` package (pip install 'kgpt2[data]')") from None
    if path.startswith("hf:"):
        name, _, config = path[3:].partition(":")
        args, kwargs = (name, config or None), {}
        _refuse_without_the_hub(path)
    else:
        args, kwargs = ("parquet" if path.endswith(".parquet") else "arrow",), {"data_files": {"train": path}}
    try:
        return datasets.load_dataset(*args, streaming=streaming, **kwargs)
    except Exception as e:  # network, unknown dataset, bad file: one clear line
        raise UserError(f"cannot open '{path}' with datasets: {str(e).splitlines()[0][:300]}") from None


def _refuse_without_the_hub(path: str) -> None:
    """A UserError at once when the Hub cannot be reached: a streamed dataset has no offline copy to fall back on,
    and `datasets` would retry for ~25 s before saying so."""
    host = unreachable_hub_host()
    if host:
        raise UserError(f"cannot open '{path}': {host} cannot be reached (no network?); hf: sources stream from the "
                        "Hub, so prepare where there is a network, or pass a local copy (.parquet, .jsonl)")


def _table_chunks(path: Path):
    """DataFrames of a CSV/TSV/JSONL/parquet file, a few thousand rows at a time."""
    import pandas as pd

    suffix = plain(path).suffix.lower()  # pandas unpacks a .csv.gz or .jsonl.gz itself
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=_TABLE_CHUNK_ROWS):
            yield batch.to_pandas()
    elif suffix in (".jsonl", ".json"):
        yield from pd.read_json(path, lines=True, chunksize=_TABLE_CHUNK_ROWS, dtype=False)
    else:
        yield from pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", chunksize=_TABLE_CHUNK_ROWS,
                               dtype=str, keep_default_na=False)


def unnamed_rows_note(src) -> str | None:
    """For a table or instruction file without ids: how its rows are named, which decides their split (said
    before the progress bar starts); None when it has ids, or for other formats (papers carry theirs)."""
    path = Path(src.path)
    if src.format not in ("table", "alpaca", "messages", "preferences") or not path.is_file():
        return None  # a folder's files are named by their paths; hf: rows by their split and row
    try:
        if src.format == "table":
            names, has_id = f"{plain(path).name}:<row>", "id" in next(_table_chunks(path)).columns
        else:
            names, has_id = f"{plain(path).stem}:<record>", "id" in (first_record(path) or {})
    except Exception:  # unreadable: the reader says why, with the row
        return None
    if has_id:
        return None
    return (f"{path} has no id {'column' if src.format == 'table' else 'field'}: its rows are named {names}, and each "
            "row's split (train, validation, test) follows that name; keep the file's name and row order when you "
            f"prepare it again, or add an id {'column' if src.format == 'table' else 'field'}")


def read_table(src):
    path, column, row = Path(src.path), src.text_column, 0
    try:
        for chunk in _table_chunks(path):
            if column not in chunk.columns:
                raise UserError(f"{path}: no column '{column}' (columns: {', '.join(map(str, chunk.columns))}); "
                                "pass --text-column")
            ids = chunk["id"] if "id" in chunk.columns else None
            for j, text in enumerate(chunk[column].tolist()):
                doc_id = str(ids.iloc[j]) if ids is not None else f"{plain(path).name}:{row + j}"
                yield Document(doc_id, text if isinstance(text, str) else "")
            row += len(chunk)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 near row {row}; re-encode the file as UTF-8") from None
    except ValueError as e:  # pandas' parse errors (a truncated JSON line, a ragged CSV row)
        raise UserError(f"{path}: cannot parse near row {row}: {str(e).splitlines()[0][:200]}") from None
