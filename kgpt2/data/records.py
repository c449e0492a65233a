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

import io
import itertools
import json
import math
from pathlib import Path

from kgpt2.data.compression import open_bytes, plain
from kgpt2.data.documents import INVALID_JSON, NOT_OBJECT, Document, SourceStats
from kgpt2.errors import UserError
from kgpt2.model.hf_configs import unreachable_hub_host

_TABLE_CHUNK_ROWS = 2048


def jsonl_records(path: Path, stats: SourceStats):
    """(line number, dict) for each valid JSON object line; bad lines are counted."""
    with open_bytes(path) as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip() and (record := json_object(raw, f"{path}:{lineno}", stats)) is not None:
                yield lineno, record


def json_object(raw: bytes, where: str, stats: SourceStats) -> dict | None:
    """The JSON object of one line, or None when it is not UTF-8 JSON of an object (skipped and counted)."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        stats.skip("not UTF-8", where)
        return None
    except json.JSONDecodeError:
        stats.skip(INVALID_JSON, where)
        return None
    if not isinstance(record, dict):
        stats.skip(NOT_OBJECT, where)
        return None
    return record


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
            raise UserError(_not_an_array(path, text, e)) from None
    return None


def _not_an_array(path: Path, text: str, e: json.JSONDecodeError) -> str:
    """Why a file starting with "[" is no JSON array. A first line that is a whole list followed by more
    ("Extra data") is JSON Lines of lists: that line is named, not the valid one after it."""
    start = len(text) - len(text.lstrip())
    if e.msg == "Extra data" and "\n" not in text[start:e.pos].rstrip():
        line = text[:start].count("\n") + 1
        return f"{path}:{line}: a JSON list, not an object (each line of JSON Lines must be one record {{...}})"
    return f"{path}:{e.lineno}: invalid JSON ({e.msg})"


def json_records(src):
    """(where, record) of a JSON array or JSON Lines file of objects."""
    path = Path(src.path)
    records = json_array(path)
    if records is None:
        for lineno, record in jsonl_records(path, src.stats):
            yield f"{path}:{lineno}", record
        return
    for i, record in enumerate(records, 1):  # [record 1] is the first, as file:1 is the first line
        if not isinstance(record, dict):
            src.stats.skip(NOT_OBJECT, f"{path} [record {i}]")
            continue
        yield f"{path} [record {i}]", record


TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")


def is_table_file(path) -> bool:
    """A CSV, TSV or parquet file (a .csv.gz too): its records are rows, not JSON."""
    return not str(path).startswith("hf:") and plain(Path(path)).suffix.lower() in TABLE_SUFFIXES


def records_format(keys) -> str | None:
    """The format of records with these fields: preferences, messages or alpaca; None for none of them."""
    keys = set(keys)
    if {"chosen", "rejected"} <= keys:
        return "preferences"
    if "messages" in keys:
        return "messages"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    return None


def table_columns(path: Path) -> list[str]:
    """The column names of a CSV/TSV/parquet file, from its header (or schema) alone."""
    suffix = plain(path).suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    import pandas as pd

    try:
        return [str(c) for c in pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", nrows=0).columns]
    except pd.errors.EmptyDataError:  # no bytes, not even a header
        return []


def table_records(path: Path):
    """(where, record) per row of a CSV/TSV/parquet table of records (Alpaca, preference pairs), as a JSON Lines
    file of them gives. A CSV's cells are text ("" when empty); parquet keeps its types (lists of messages too)."""
    row = 0
    try:
        for records in _table_rows(path):
            for record in records:
                row += 1
                yield f"{path} [row {row}]", record
    except UnicodeDecodeError:  # a CSV's: pandas decodes blocks of it, so only near which row is known
        raise UserError(f"{path}: not UTF-8 near row {row + 1}; re-encode the file as UTF-8") from None
    except ValueError as e:  # pandas' and pyarrow's parse errors (a ragged CSV row, a file that is no parquet)
        raise UserError(f"{path}: cannot parse near row {row + 1}: {str(e).splitlines()[0][:200]}") from None


def _table_rows(path: Path):
    """Lists of records (dicts), a few thousand rows at a time."""
    suffix = plain(path).suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from (b.to_pylist() for b in pq.ParquetFile(path).iter_batches(batch_size=_TABLE_CHUNK_ROWS))
    else:
        import pandas as pd

        try:
            frames = _csv_frames(path, suffix)  # reads the header
        except pd.errors.EmptyDataError:  # no bytes, not even a header: no records, which the caller says
            return
        yield from (frame.to_dict("records") for frame in frames)


def _csv_frames(path: Path, suffix: str):
    import pandas as pd

    return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", chunksize=_TABLE_CHUNK_ROWS, dtype=str,
                       keep_default_na=False)


def first_record(p: Path):
    """The first JSON object of a JSON array or JSON Lines file, for format detection; None when it holds none.

    Lines that are not UTF-8 JSON are passed over here (the reader skips and
    counts them); a file with no such line at all is refused.
    """
    with open_bytes(p) as f:
        line = f.readline()
        utf16 = line[:2] in (b"\xff\xfe", b"\xfe\xff")  # a byte-order mark: Windows' "Unicode" text
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
        advice = ("it is UTF-16: re-encode it as UTF-8 (e.g. iconv -f utf-16 -t utf-8)" if utf16
                  else "it is in another encoding: re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8)" if first_bad
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


def _table_chunks(path: Path, stats: SourceStats):
    """(DataFrame, places) of a CSV/TSV/JSONL/parquet file, a few thousand rows at a time. A place per row of
    the frame: (its row from 0, which names it, where a message puts it, its JSON line or None)."""
    suffix = plain(path).suffix.lower()  # pandas unpacks a .csv.gz itself
    if suffix == ".json" and (records := json_array(path)) is not None:
        yield from _array_table_chunks(path, records, stats)
        return
    if suffix in (".jsonl", ".json"):
        yield from _jsonl_table_chunks(path, stats)
        return
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        frames = (b.to_pandas() for b in pq.ParquetFile(path).iter_batches(batch_size=_TABLE_CHUNK_ROWS))
    else:
        frames = _csv_frames(path, suffix)
    row = 0
    for frame in frames:  # [row 1] is the first row after the header, as file:1 is a file's first line
        yield frame, [(row + j, f"{path} [row {row + j + 1}]", None) for j in range(len(frame))]
        row += len(frame)


def _array_table_chunks(path: Path, records: list, stats: SourceStats):
    """A JSON array of objects (pandas' `to_json(orient="records")`, many exports) as table chunks: a row per
    object, numbered by its place in the array (it was read line by line, every line refused)."""
    import pandas as pd

    for start in range(0, len(records), _TABLE_CHUNK_ROWS):
        rows, places = [], []
        for row, record in enumerate(records[start:start + _TABLE_CHUNK_ROWS], start):
            where = f"{path} [record {row + 1}]"
            if isinstance(record, dict):
                rows.append(record)
                places.append((row, where, json.dumps(record)))  # the "line" `_no_text` reads a reason from
            else:
                stats.skip(NOT_OBJECT, where)
        if rows:
            yield pd.DataFrame.from_records(rows), places


def _jsonl_table_chunks(path: Path, stats: SourceStats):
    """A JSON Lines table in the chunks pandas' chunked reader made (2,048 lines, blank ones dropped), so the
    values, and the names of rows without an id, are what they were. A bad line failed the whole file there; here
    it is skipped and counted, and still counts as a row, so the rows after it keep their names (and splits)."""
    lineno = row = 0
    # newline="" ends lines where pandas did; surrogateescape keeps a non-UTF-8 line for json_object to count
    with open_bytes(path) as raw, io.TextIOWrapper(raw, "utf-8", "surrogateescape", newline="") as f:
        while lines := list(itertools.islice(f, _TABLE_CHUNK_ROWS)):
            places = []
            for line in lines:
                lineno += 1
                if line.strip():
                    places.append((row, f"{path}:{lineno}", line))
                    row += 1
            frame, places = _lines_frame(places, stats)
            if places:
                yield frame, places


def _lines_frame(places: list, stats: SourceStats):
    """(DataFrame, places) of JSON lines as pandas reads them; if pandas refuses them, of their valid lines."""
    import pandas as pd

    def parse(places):
        frame = pd.read_json(io.StringIO("\n".join(line.strip() for *_, line in places)), lines=True, dtype=False)
        if len(frame) != len(places):  # e.g. `{...}, {...}` on one line
            raise ValueError("a line holds more than one JSON value")
        return frame

    try:
        return parse(places), places
    except ValueError:  # which line: json.loads names none, so each line is tried apart
        places = [p for p in places if json_object(p[2].encode("utf-8", "surrogateescape"), p[1], stats) is not None]
    try:
        return (parse(places) if places else None), places
    except ValueError as e:  # valid JSON to Python, not to pandas (NaN, a huge number, ...)
        raise UserError(f"{places[0][1]}: pandas cannot read the lines from here on: "
                        f"{str(e).splitlines()[0][:200]}; pass --format") from None


def unnamed_rows_note(src) -> str | None:
    """For a table or instruction file without ids: how its rows are named, which decides their split (said
    before the progress bar starts); None when it has ids, or for other formats (papers carry theirs)."""
    path = Path(src.path)
    if src.format not in ("table", "alpaca", "messages", "preferences") or not path.is_file():
        return None  # a folder's files are named by their paths; hf: rows by their split and row
    try:
        if src.format == "table":
            columns = next(_table_chunks(path, SourceStats()))[0].columns
            if src.text_column not in columns:
                return None  # the reader refuses the file: no note before that error
            names, has_id = f"{plain(path).name}:<row>", "id" in columns
        else:
            fields = table_columns(path) if is_table_file(path) else first_record(path) or {}
            names, has_id = f"{plain(path).stem}:<record>", "id" in fields
    except Exception:  # unreadable: the reader says why, with the row
        return None
    if has_id:
        return None
    field = "column" if src.format == "table" or is_table_file(path) else "field"
    return (f"{path} has no id {field}: its rows are named {names}, and each row's split (train, validation, test) "
            f"follows that name; keep the file's name and row order when you prepare it again, or add an id {field}")


def read_table(src):
    path, column, rows = Path(src.path), src.text_column, 0
    try:
        for chunk, places in _table_chunks(path, src.stats):
            if column not in chunk.columns and not rows:  # a JSON Lines chunk may lack it: its rows are skipped
                raise UserError(_no_column(path, column, chunk.columns))
            ids = chunk["id"] if "id" in chunk.columns else None
            texts = chunk[column].tolist() if column in chunk.columns else [None] * len(chunk)
            for j, (text, (row, where, line)) in enumerate(zip(texts, places)):
                if not isinstance(text, str):
                    src.stats.skip(_no_text(column, text, line), where)
                    continue
                doc_id = str(ids.iloc[j]) if ids is not None else f"{plain(path).name}:{row}"
                yield Document(doc_id, text, where=where)
            rows = places[-1][0] + 1
    except UnicodeDecodeError:  # a CSV's: pandas decodes blocks of it, so only near which row is known
        raise UserError(f"{path}: not UTF-8 near row {rows + 1}; re-encode the file as UTF-8") from None
    except ValueError as e:  # pandas' parse errors (a ragged CSV row)
        raise UserError(f"{path}: cannot parse near row {rows + 1}: {str(e).splitlines()[0][:200]}") from None


def _no_column(path: Path, column: str, columns) -> str:
    """A table without its text column; instruction or preference records are told their format, since one
    column of them (--text-column) would lose the prompt/response structure."""
    fmt = records_format(map(str, columns))
    advice = f"these are {fmt} records: leave --format out (or pass --format {fmt})" if fmt else "pass --text-column"
    return f"{path}: no column '{column}' (columns: {', '.join(map(str, columns))}); {advice}"


_JSON_KINDS = {bool: "true or false", int: "a number", float: "a number", list: "a list", dict: "an object"}


def _no_text(column: str, value, line: str | None) -> str:
    """Why a row holds no text: no such field, a null, or another type (of the JSON line, when there is one)."""
    if line is not None:
        try:
            record = json.loads(line)
        except ValueError:
            record = {column: value}
        if column not in record:
            return f"no '{column}' field"
        value = record[column]
    if value is None or (isinstance(value, float) and math.isnan(value)):  # NaN: pandas' missing value
        return f"'{column}' is null"
    return f"'{column}' is not a string ({_JSON_KINDS.get(type(value), type(value).__name__)})"
