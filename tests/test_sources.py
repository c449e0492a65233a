"""Every source kind reads real files from ../shared/data; bad input is named or counted."""

from __future__ import annotations

import gzip
import itertools
import json

import pytest

from kgpt2.data.sources import detect_format, open_source
from kgpt2.errors import UserError
from kgpt2.generation.templates import format_prompt

pytestmark = pytest.mark.backend_neutral  # data sources and format detection


def memsum_records(shared_data, split="val", n=3):
    with open(shared_data / "pubmed" / "memsum_pubmed_300" / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in itertools.islice(f, n)]


@pytest.fixture
def cohan_file(tmp_path, shared_data):
    """The scientific_papers (Cohan et al.) schema, filled with real MemSum PubMed text."""
    path = tmp_path / "test.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, r in enumerate(memsum_records(shared_data)):
            half = len(r["text"]) // 2
            f.write(json.dumps({
                "article_id": f"PMC{1000 + i}",
                "article_text": r["text"],
                "abstract_text": [f"<S> {s} </S>" for s in r["summary"]],
                "section_names": ["introduction", "methods"],
                "sections": [r["text"][:half], r["text"][half:]],
            }) + "\n")
    return path


def test_scientific_papers_schema_and_contents(cohan_file, shared_data):
    records = memsum_records(shared_data)
    assert detect_format(str(cohan_file)) == "papers"
    docs = list(open_source(cohan_file))
    assert [d.id for d in docs] == ["PMC1000", "PMC1001", "PMC1002"]
    assert {d.split for d in docs} == {"test"}  # the file's own split, from its name
    abstract = "\n".join(s.strip() for s in records[0]["summary"])
    body = "\n".join(s.strip() for s in records[0]["text"])
    assert docs[0].text == abstract + "\n\n" + body
    assert "<S>" not in docs[0].text and "</S>" not in docs[0].text
    assert next(iter(open_source(cohan_file, contents="abstract"))).text == abstract
    assert next(iter(open_source(cohan_file, contents="body"))).text == body


def test_memsum_folder_keeps_its_splits(shared_data):
    src = open_source(shared_data / "pubmed" / "memsum_pubmed_300")
    assert src.format == "papers"
    splits = [d.split for d in src]
    assert {s: splits.count(s) for s in set(splits)} == {"train": 100, "validation": 100, "test": 100}
    assert src.stats.total_skipped == 0


@pytest.mark.slow  # importing `datasets` alone takes ~10 s here
def test_parquet_with_article_and_abstract_goes_through_datasets(tmp_path, shared_data, monkeypatch):
    pd = pytest.importorskip("pandas")
    datasets = pytest.importorskip("datasets")
    # A streaming IterableDataset imports torch when it is installed (20 s here) only
    # to share a counter with torch workers; nothing here uses torch.
    monkeypatch.setattr(datasets.config, "TORCH_AVAILABLE", False)
    records = memsum_records(shared_data, "train", 4)
    path = tmp_path / "pubmed.parquet"
    pd.DataFrame({"article": [" ".join(r["text"]) for r in records],
                  "abstract": [" ".join(f"<S> {s} </S>" for s in r["summary"]) for r in records]}).to_parquet(path)
    assert detect_format(str(path)) == "hf"
    docs = list(open_source(path, contents="both"))
    assert len(docs) == 4 and "<S>" not in docs[0].text
    assert docs[0].text.endswith(" ".join(records[0]["text"]))
    assert [d.text for d in open_source(path, contents="body")] == [" ".join(r["text"]) for r in records]


def test_sumpubmed_layout(shared_data):
    src = open_source(shared_data / "pubmed" / "sumpubmed_1000")
    assert src.format == "sumpubmed"
    first = list(itertools.islice(iter(src), 3))
    assert [d.id for d in first] == ["sumpubmed_1", "sumpubmed_2", "sumpubmed_3"]  # numeric order
    for d in first:
        assert not any(line in ("BACKGROUND", "RESULTS", "CONCLUSIONS") for line in d.text.splitlines())
    abstract = next(iter(open_source(shared_data / "pubmed" / "sumpubmed_1000", contents="abstract"))).text
    assert abstract.startswith("the phytohormone indole-3-acetic acid")
    assert first[0].text.startswith(abstract + "\n\n")


def test_plain_text_file_separator_and_folder(tmp_path, shared_data):
    shakespeare = shared_data / "shakespeare" / "input.txt"
    whole = list(open_source(shakespeare))
    assert len(whole) == 1 and whole[0].text == shakespeare.read_text(encoding="utf-8")
    scenes = list(open_source(shakespeare, separator="\n\n"))
    assert len(scenes) > 7000 and scenes[0].text == "First Citizen:\nBefore we proceed any further, hear me speak."
    folder = tmp_path / "plays"
    folder.mkdir()
    for i, d in enumerate(scenes[:3]):
        (folder / f"scene_{i}.txt").write_text(d.text, encoding="utf-8")
    assert detect_format(str(folder)) == "folder"
    assert [d.text for d in open_source(folder)] == [d.text for d in scenes[:3]]


@pytest.mark.parametrize("suffix", ["csv", "parquet", "jsonl"])
def test_tables_with_a_named_column_stream_in_chunks(tmp_path, shared_data, suffix, monkeypatch):
    import pandas as pd

    import kgpt2.data.records as records

    monkeypatch.setattr(records, "_TABLE_CHUNK_ROWS", 2)  # 5 rows -> 3 chunks
    abstracts = [" ".join(r["summary"]) for r in memsum_records(shared_data, "test", 5)]
    frame = pd.DataFrame({"id": [f"a{i}" for i in range(5)], "abstract": abstracts, "n": range(5)})
    path = tmp_path / f"table.{suffix}"
    {"csv": lambda: frame.to_csv(path, index=False), "parquet": lambda: frame.to_parquet(path),
     "jsonl": lambda: frame.to_json(path, orient="records", lines=True)}[suffix]()
    src = open_source(path, fmt="table", text_column="abstract")
    docs = list(src)
    assert [d.text for d in docs] == abstracts and [d.id for d in docs] == ["a0", "a1", "a2", "a3", "a4"]
    with pytest.raises(UserError, match=f"table.{suffix}: no column 'body'"):
        list(open_source(path, fmt="table", text_column="body"))


@pytest.mark.parametrize("path, fmt, response, total", [
    ("alpaca/alpaca_5000.json", "alpaca", "output", 5000),
    ("preferences/llms-from-scratch-instruction-data-with-preference.json", "preferences", "chosen", 1100),
])
def test_instruction_records_render_as_lm_text(shared_data, path, fmt, response, total):
    path = shared_data / path
    records = json.loads(path.read_text(encoding="utf-8"))
    src = open_source(path)
    docs = list(src)
    assert detect_format(str(path)) == fmt and len(docs) + src.stats.total_skipped == total
    first = records[0]
    assert docs[0].text == format_prompt(first["instruction"], first["input"]) + first[response].strip()


def test_format_override(cohan_file):
    docs = list(open_source(cohan_file, fmt="table", text_column="article_id"))
    assert [d.text for d in docs] == ["PMC1000", "PMC1001", "PMC1002"]
    with pytest.raises(UserError, match="unknown format 'xml'"):
        open_source(cohan_file, fmt="xml")


# Bad input ---------------------------------------------------------------
def test_missing_file():
    with pytest.raises(UserError, match="'/no/such/corpus.jsonl' does not exist"):
        open_source("/no/such/corpus.jsonl")


@pytest.mark.parametrize("name, content", [("empty.jsonl", b""), ("blank.jsonl", b"\n \n"), ("array.json", b" []\n"),
                                           ("empty.jsonl.gz", gzip.compress(b"")), ("empty.csv", b"")],
                         ids=["empty", "blank-lines", "empty-array", "empty-gzip", "empty-csv"])
def test_an_empty_file_is_called_empty_not_of_an_unknown_format(tmp_path, name, content):
    """An empty download was refused with "cannot tell the format ...; pass --format", which no format fixes."""
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=f"^source '{tmp_path / name}' holds no records: it is empty$"):
        detect_format(str(tmp_path / name))


def test_bad_json_lines_non_utf8_and_empty_documents_are_skipped_and_counted(cohan_file):
    good = cohan_file.read_bytes().splitlines(keepends=True)
    bad = cohan_file.with_name("train.jsonl")
    bad.write_bytes(good[0] + b'{"article_id": "x", "article_text": ["truncat\n'  # line 2: truncated
                    + b"not json at all\n"  # line 3
                    + b'{"article_id": "y", "article_text": ["caf\xe9"], "abstract_text": []}\n'  # line 4: latin-1
                    + b'{"article_id": "z", "article_text": [], "abstract_text": ["<S> </S>"]}\n'  # 5: empty
                    + good[1])
    src = open_source(bad)
    docs = list(src)
    assert [d.id for d in docs] == ["PMC1000", "PMC1001"]
    assert src.stats.skipped == {"invalid or truncated JSON": 2, "not UTF-8": 1, "empty document": 1}
    assert src.stats.examples == [f"{bad}:2: invalid or truncated JSON", f"{bad}:3: invalid or truncated JSON",
                                  f"{bad}:4: not UTF-8", f"{bad}:5: empty document"]  # its line, not its id 'z'


def test_wrong_schema_is_a_hard_error_naming_file_and_line(tmp_path, cohan_file, shared_data):
    path = tmp_path / "val.jsonl"
    path.write_text(cohan_file.read_text(encoding="utf-8") + json.dumps({"title": "x", "body": "y"}) + "\n")
    with pytest.raises(UserError, match=f"{path}:4: not a scientific_papers record"):
        list(open_source(path, fmt="papers"))
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"question": "c"}]))
    with pytest.raises(UserError, match=r"alpaca.json \[record 2\]: expected an output field, found question$"):
        list(open_source(alpaca, fmt="alpaca"))
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"instruction": "a",\n "output": "b"},\n{"instruction": \n')
    with pytest.raises(UserError, match=r"broken.json:5: invalid JSON"):
        list(open_source(broken, fmt="alpaca"))


def test_non_utf8_text_file_in_a_folder_is_skipped(tmp_path):
    (tmp_path / "a.txt").write_text("a good document", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes("caf\u00e9 in latin-1".encode("latin-1"))
    (tmp_path / "c.txt").write_text("   \n", encoding="utf-8")
    src = open_source(tmp_path)
    assert [d.text for d in src] == ["a good document"]
    assert src.stats.skipped == {"not UTF-8": 1, "empty document": 1}
    assert src.stats.examples[0] == f"{tmp_path / 'b.txt'}:1: not UTF-8"


def test_arrow_files_go_to_datasets_and_cli_separators_unescape(tmp_path):
    from kgpt2.cli import unescape

    path = tmp_path / "pubmed.arrow"
    path.write_bytes(b"")
    assert detect_format(str(path)) == "hf"  # never read as a CSV table
    assert unescape("\\n\\n") == "\n\n"
    assert unescape("—\\n") == "—\n"  # non-ASCII text survives the escape decoding
    assert unescape("===") == "==="


@pytest.mark.parametrize("codec", ["gz", "bz2", "xz"])
def test_compressed_files_read_as_the_file_they_hold(tmp_path, shared_data, codec):
    """`corpus.jsonl.gz` was read as a text file of binary bytes: 'holds no documents (... not UTF-8)'."""
    import bz2
    import gzip
    import lzma

    opener = {"gz": gzip.open, "bz2": bz2.open, "xz": lzma.open}[codec]
    papers = shared_data / "pubmed" / "memsum_pubmed_300"
    folder = tmp_path / "corpus"
    folder.mkdir()
    for split in ("train", "val"):  # a folder of compressed splits keeps its splits
        with opener(folder / f"{split}.jsonl.{codec}", "wb") as f:
            f.write((papers / f"{split}.jsonl").read_bytes())
    alpaca = tmp_path / f"alpaca.json.{codec}"
    with opener(alpaca, "wb") as f:
        f.write((shared_data / "alpaca" / "alpaca_5000.json").read_bytes())
    assert detect_format(str(folder)) == "papers" and detect_format(str(alpaca)) == "alpaca"
    docs = list(open_source(str(folder)))
    plain = list(open_source(str(papers)))
    assert [(d.id, d.text, d.split) for d in docs] == [(d.id, d.text, d.split) for d in plain if d.split != "test"]
    assert len(list(open_source(str(alpaca)))) == 5000 - 2  # two records with an empty output are skipped
    table = tmp_path / f"t.csv.{codec}"
    with opener(table, "wt", encoding="utf-8") as f:
        f.write("text\nfirst row\nsecond row\n")
    plain_table = tmp_path / "t.csv"
    plain_table.write_text("text\nfirst row\nsecond row\n")
    # `kgpt2 align`'s preference files too.
    from kgpt2.data.preference_pairs import read_preferences

    plain_prefs = shared_data / "preferences" / "llms-from-scratch-instruction-data-with-preference.json"
    prefs = tmp_path / f"prefs.json.{codec}"
    with opener(prefs, "wb") as f:
        f.write(plain_prefs.read_bytes())
    assert read_preferences([prefs], "instruction") == read_preferences([plain_prefs], "instruction")
    # Compressing a file keeps its documents' ids, so `prepare` splits them the same way.
    assert [(d.id, d.text) for d in open_source(str(table))] == [(d.id, d.text) for d in open_source(str(plain_table))]


def test_a_truncated_or_unsupported_archive_is_one_sentence(tmp_path, shared_data):
    import gzip

    whole = gzip.compress((shared_data / "pubmed" / "memsum_pubmed_300" / "val.jsonl").read_bytes())
    cut = tmp_path / "val.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])  # a download that stopped half way
    with pytest.raises(UserError, match=r"'.*val.jsonl.gz' is a damaged or truncated .gz file \(Compressed file "
                                        r"ended before the end-of-stream marker was reached\); download"):
        list(open_source(str(cut), "papers"))
    (tmp_path / "both").mkdir()
    (tmp_path / "both" / "val.jsonl").write_bytes(b"{}\n")
    (tmp_path / "both" / "val.jsonl.gz").write_bytes(gzip.compress(b"{}\n"))
    with pytest.raises(UserError, match="val.jsonl' and '.*val.jsonl.gz' hold the same file, plain and compressed"):
        list(open_source(str(tmp_path / "both")))
    zst = tmp_path / "c.jsonl.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(UserError, match=r"is a .zst archive, which kgpt2 does not read; unpack it first \(zstd -d"):
        detect_format(str(zst))


def test_an_hf_source_without_a_network_is_refused_at_once(monkeypatch):
    """`datasets` retried for ~25 s before "Couldn't reach ... on the Hub"; a streamed dataset has no offline copy."""
    import socket

    datasets = pytest.importorskip("datasets")
    from kgpt2.data.records import load_hf

    def no_dns(host, *args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    called = []
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: called.append(a) or {"train": []})
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match=r"^cannot open 'hf:ccdv/pubmed-summarization': huggingface.co cannot be "
                                        r"reached \(no network\?\); hf: sources stream from the Hub"):
        load_hf("hf:ccdv/pubmed-summarization")
    assert not called
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # the proxy resolves names: datasets decides
    assert load_hf("hf:ccdv/pubmed-summarization") == {"train": []} and called


def test_a_table_without_ids_is_told_what_keeps_its_split(tmp_path):
    """Rows without an id are named file:row, and the split is a hash of that name: renaming the file moved
    articles between train and test without a word."""
    from kgpt2.data.records import unnamed_rows_note

    (tmp_path / "a.csv").write_text("text\none\ntwo\n")
    (tmp_path / "b.csv.gz").write_bytes(__import__("gzip").compress(b"id,text\n7,one\n"))
    note = unnamed_rows_note(open_source(str(tmp_path / "a.csv")))
    assert note == (f"{tmp_path / 'a.csv'} has no id column: its rows are named a.csv:<row>, and each row's split "
                    "(train, validation, test) follows that name; keep the file's name and row order when you prepare "
                    "it again, or add an id column")
    assert [d.id for d in open_source(str(tmp_path / "a.csv"))] == ["a.csv:0", "a.csv:1"]
    assert unnamed_rows_note(open_source(str(tmp_path / "b.csv.gz"))) is None
    assert [d.id for d in open_source(str(tmp_path / "b.csv.gz"))] == ["7"]
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text('[{"instruction": "Say hi", "input": "", "output": "hi"}]')
    assert unnamed_rows_note(open_source(str(alpaca))).startswith(
        f"{alpaca} has no id field: its rows are named alpaca:<record>, and each row's split")
    assert [d.id for d in open_source(str(alpaca))] == ["alpaca:0"]


@pytest.mark.parametrize("codec", ["", ".gz"])
def test_a_broken_json_array_names_its_line_after_blank_lines(tmp_path, codec):
    """The peek for "[" dropped the blank lines before it, so the line named was off by their number."""
    import gzip

    text = b'\n\n[{"instruction": "a", "input": "", "output": "b"},\n{"instruction": oops}]\n'
    path = tmp_path / f"a.json{codec}"
    path.write_bytes(gzip.compress(text) if codec else text)
    with pytest.raises(UserError, match=rf"a.json{codec}:4: invalid JSON \(Expecting value\)$"):
        list(open_source(str(path), "alpaca"))


# A table's bad lines, skip reasons and places ------------------------------------------------------
def test_bad_lines_of_a_table_jsonl_are_skipped_and_the_rest_keep_their_names(tmp_path, monkeypatch):
    """One bad line failed the whole file with pandas' "cannot parse near row 0: Unexpected character found when
    decoding 'null'"; a truncated last line did too. The rows' names (so their splits) are those of the good file."""
    import kgpt2.data.records as records

    monkeypatch.setattr(records, "_TABLE_CHUNK_ROWS", 3)  # the bad line in the 2nd chunk, a blank line in the 1st
    good = [json.dumps({"text": f"hello world {i}"}) for i in range(8)]
    clean = tmp_path / "clean.jsonl"
    clean.write_text("\n".join(good[:2] + [""] + good[2:]) + "\n")
    bad = tmp_path / "bad.jsonl"  # the same with line 5 broken, line 7 not UTF-8 and the last line cut off
    bad.write_bytes("\n".join(good[:2] + ["", good[2], "not json at all", good[4], '{"text": "caf\xe9"}', good[6],
                                          good[7][:-5]]).encode("latin-1"))
    expected = [(f"clean.jsonl:{i}", f"hello world {i}") for i in range(8)]
    assert [(d.id, d.text) for d in open_source(clean)] == expected
    src = open_source(bad)
    assert src.format == "table"
    # A bad row keeps its place, so the good ones after it are named (and split) as in the clean file.
    assert [(d.id.replace("bad", "clean"), d.text) for d in src] == [expected[i] for i in (0, 1, 2, 4, 6)]
    assert src.stats.skipped == {"invalid or truncated JSON": 2, "not UTF-8": 1}
    assert src.stats.examples == [f"{bad}:5: invalid or truncated JSON", f"{bad}:7: not UTF-8",
                                  f"{bad}:9: invalid or truncated JSON"]
    nothing = tmp_path / "nothing.jsonl"
    nothing.write_text("not json\n{broken\n")
    with pytest.raises(UserError, match="none of the 2 lines of .* is UTF-8 JSON; it is not JSON Lines"):
        open_source(nothing)


def test_a_table_row_without_text_says_what_is_wrong_and_where(tmp_path):
    """`{"text": 5}`, `{"text": null}` and `{"other": "x"}` were all "empty document", at `file:<0-based row>`."""
    import pandas as pd

    path = tmp_path / "line5.jsonl"
    path.write_text('{"text": "a b"}\n{"text": 5}\n{"text": null}\n{"other": "x"}\n{"text": " "}\n')
    src = open_source(path)
    assert [d.id for d in src] == ["line5.jsonl:0"]
    assert src.stats.examples == [f"{path}:2: 'text' is not a string (a number)", f"{path}:3: 'text' is null",
                                  f"{path}:4: no 'text' field", f"{path}:5: empty document"]
    table = tmp_path / "t.parquet"
    pd.DataFrame({"text": ["a", None, ""], "id": ["x", "y", "z"]}).to_parquet(table)
    src = open_source(table, fmt="table")
    assert [d.id for d in src] == ["x"]
    assert src.stats.examples == [f"{table} [row 2]: 'text' is null", f"{table} [row 3]: empty document"]


def test_places_are_one_based_and_alpaca_says_an_output(tmp_path):
    """An Alpaca array's 2nd record was `[record 1]`; a text part's place was its 0-based id; "a output"."""
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "a", "output": "b"}, 3, {"instruction": "c", "output": " "}]))
    src = open_source(alpaca)
    assert [d.id for d in src] == ["alpaca:0"]  # ids (so splits) unchanged
    assert src.stats.examples == [f"{alpaca} [record 2]: not a JSON object", f"{alpaca} [record 3]: empty output"]
    text = tmp_path / "parts.txt"
    text.write_text("one\n\n   \n\nthree\n")
    src = open_source(text, separator="\n\n")
    assert [d.id for d in src] == ["parts.txt:0", "parts.txt:2"]
    assert src.stats.examples == [f"{text}:3: empty document"]


def test_a_csv_without_the_text_column_gets_no_note_about_its_ids_first(tmp_path):
    """The "no id column: keep the file's name and row order" note came before the fatal "no column 'text'"."""
    from kgpt2.data.records import unnamed_rows_note

    path = tmp_path / "t.csv"
    path.write_text("body\nx\n")
    src = open_source(path)
    assert unnamed_rows_note(src) is None
    with pytest.raises(UserError, match=r"t.csv: no column 'text' \(columns: body\); pass --text-column$"):
        list(src)


def test_kgpt2_shard_sets_and_runs_are_not_corpora(tmp_path):
    """`--source <shard set>` tokenised its ids.txt as articles (format "folder"); a run's votes.jsonl as papers."""
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({"format": "kgpt2-shards/1", "splits": {}}))
    (shards / "train.ids.txt").write_text("a\n")
    run = tmp_path / "run"
    (run / "ckpt-10").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "votes.jsonl").write_text('{"prompt": "p", "chosen": "c"}\n')
    for fmt in (None, "folder"):
        with pytest.raises(UserError, match=f"^'{shards}' is a kgpt2 shard set .*, not a corpus; --source takes the "
                                            "text it was made from"):
            open_source(shards, fmt)
        with pytest.raises(UserError, match=f"^'{run}' is a kgpt2 run .*, not a corpus"):
            open_source(run, fmt)
    (run / "ckpt-10").rmdir()  # a folder with a config.json of its own is still a corpus
    (run / "notes.txt").write_text("hello")
    assert detect_format(str(run)) == "papers"


def test_sumpubmed_and_folder_formats_say_they_take_a_folder(tmp_path):
    path = tmp_path / "line5.jsonl"
    path.write_text('{"text": "a"}\n')
    with pytest.raises(UserError, match=rf"^--format sumpubmed reads a SumPubMed folder \(line_text/text_<i>.txt, "
                                        rf"abstract/abstract_<i>.txt\), and '{path}' is a file$"):
        open_source(path, "sumpubmed")
    with pytest.raises(UserError, match="^--format folder reads a folder of .txt files"):
        open_source(path, "folder")


@pytest.mark.parametrize("indent", [None, 1])
def test_a_json_array_of_text_objects_is_a_table(tmp_path, indent, monkeypatch):
    """`df.to_json("x.json", orient="records")`, a common export: on one line it was read as a table with columns
    0..N, indented every line was refused as invalid JSON."""
    import kgpt2.data.records as records

    monkeypatch.setattr(records, "_TABLE_CHUNK_ROWS", 2)  # rows numbered on across chunks
    rows = [{"text": "first article"}, {"text": 5}, "no object", {"other": "x"}, {"text": "fifth article"}]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(rows, indent=indent))
    src = open_source(path)
    assert src.format == "table"
    assert [(d.id, d.text) for d in src] == [("export.json:0", "first article"), ("export.json:4", "fifth article")]
    assert src.stats.examples == [f"{path} [record 2]: 'text' is not a string (a number)",
                                  f"{path} [record 3]: not a JSON object", f"{path} [record 4]: no 'text' field"]
