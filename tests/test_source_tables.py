"""Instruction and preference records in tables (CSV, TSV, parquet), JSON Lines of lists, and a quiet prepare.

An Alpaca CSV was read as a table and told to "pass --text-column" (one column, the prompt lost), or with
--format alpaca refused as invalid JSON on every line; `kgpt2 align` refused a CSV of pairs the same way.
"""

from __future__ import annotations

import json

import pytest

from kgpt2.errors import UserError

pytestmark = pytest.mark.backend_neutral  # sources read and shards written before any model is built

ALPACA = [{"instruction": f"Name item {i}.", "input": "" if i % 3 else f"list, {i}", "output": f"Item \"{i}\",\nok."}
          for i in range(12)]
PAIRS = [{"prompt": f"Question {i}?", "chosen": f"Good, {i}.", "rejected": f"Bad\n{i}."} for i in range(6)]


def _write(path, records):
    """`records` as the file its suffix names (pandas' CSV/TSV/parquet as exports write them, or JSON Lines)."""
    import pandas as pd

    frame = pd.DataFrame(records)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix in (".csv", ".tsv"):
        frame.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _prepare(kgpt2_cli, tokenizer, folder, name, records, *args):
    folder.mkdir()
    _write(folder / name, records)
    return kgpt2_cli("-q", "prepare", "--source", name, "--out", "shards", "--tokenizer", tokenizer, *args,
                     cwd=folder)


@pytest.mark.parametrize("name, args", [("alp.csv", []), ("alp.csv", ["--format", "alpaca"]), ("alp.tsv", []),
                                        ("alp.parquet", [])], ids=["csv", "csv-format-alpaca", "tsv", "parquet"])
def test_an_alpaca_table_prepares_as_its_json_lines_do(kgpt2_cli, pydoc_tokenizer_dir, tmp_path, name, args):
    table = _prepare(kgpt2_cli, pydoc_tokenizer_dir, tmp_path / "table", name, ALPACA, *args)
    assert table.returncode == 0, table.stderr
    lines = _prepare(kgpt2_cli, pydoc_tokenizer_dir, tmp_path / "lines", "alp.jsonl", ALPACA)
    assert lines.returncode == 0, lines.stderr
    table_m, lines_m = (json.loads((tmp_path / d / "shards" / "manifest.json").read_text()) for d in ("table", "lines"))
    assert table_m["options"]["format"] == "alpaca"
    assert table_m["splits"]["train"]["mask"] == "train.mask.bin"  # prompt and response kept apart
    assert table_m["content_hash"] == lines_m["content_hash"]  # the same ids, tokens and masks


def test_a_preference_table_prepares_and_aligns(kgpt2_cli, pydoc_tokenizer_dir, tiny_preset, tmp_path):
    from kgpt2.data.preference_pairs import read_preferences

    result = _prepare(kgpt2_cli, pydoc_tokenizer_dir, tmp_path / "prep", "x.csv", PAIRS)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "prep" / "shards" / "manifest.json").read_text())["options"]["format"] == \
        "preferences"
    csv, parquet = _write(tmp_path / "x.csv", PAIRS), _write(tmp_path / "x.parquet", PAIRS)
    assert read_preferences(csv) == read_preferences(parquet) == read_preferences(_write(tmp_path / "x.jsonl", PAIRS))
    long = _write(tmp_path / "long.csv", [{"prompt": f"word{i} " * 200, "chosen": "yes", "rejected": "no"}
                                          for i in range(4)])
    result = kgpt2_cli("align", f"model.preset={tiny_preset}", f"align.data={long.name}", "lora.enabled=false",
                       f"checkpoints_root={tmp_path / 'runs'}", "run=a", "data.sequence_length=32", cwd=tmp_path)
    assert result.returncode == 2  # read whole: every pair reached the window check
    assert "all 4 pairs were dropped: the prompt alone fills data.sequence_length tokens" in result.stderr


def test_kto_labels_in_a_csv_are_text(tmp_path):
    from kgpt2.data.preference_pairs import read_preferences

    path = tmp_path / "kto.csv"
    path.write_text("prompt,completion,label\nQ,yes,True\nQ,no,false\nR,hm,1\n")
    assert [u["label"] for u in read_preferences(path)[1]] == [True, False, True]


def test_a_table_of_records_read_as_a_table_names_its_format_not_a_text_column(kgpt2_cli, pydoc_tokenizer_dir,
                                                                            tmp_path):
    result = _prepare(kgpt2_cli, pydoc_tokenizer_dir, tmp_path / "t", "alp.csv", ALPACA, "--format", "table")
    assert result.returncode == 2 and "--text-column" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "kgpt2: error: alp.csv: no column 'text' (columns: instruction, input, output); these are alpaca records: "
        "leave --format out (or pass --format alpaca)")


def test_an_explicit_text_column_still_reads_a_record_table_as_a_table(tmp_path):
    from kgpt2.data.sources import open_source

    path = _write(tmp_path / "alp.csv", ALPACA)
    assert open_source(path).format == "alpaca"
    src = open_source(path, text_column="output")
    assert src.format == "table" and [d.text for d in src][:2] == [ALPACA[0]["output"], ALPACA[1]["output"]]


def test_a_record_table_without_ids_is_told_of_its_id_column(tmp_path):
    from kgpt2.data.records import unnamed_rows_note
    from kgpt2.data.sources import open_source

    note = unnamed_rows_note(open_source(_write(tmp_path / "alp.csv", ALPACA)))
    assert note.startswith(f"{tmp_path / 'alp.csv'} has no id column: its rows are named alp:<record>")
    assert unnamed_rows_note(open_source(_write(tmp_path / "ids.csv", [dict(r, id=str(i)) for i, r in
                                                                       enumerate(ALPACA)]))) is None


def test_chat_messages_in_a_csv_cell_are_refused_in_one_sentence(kgpt2_cli, pydoc_tokenizer_dir, tmp_path):
    records = [{"messages": json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])}]
    result = _prepare(kgpt2_cli, pydoc_tokenizer_dir, tmp_path / "t", "chat.csv", records)
    assert result.returncode == 2 and "--text-column" not in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "kgpt2: error: chat.csv [row 1]: messages is text, not a list of role/content objects; a CSV cell holds only "
        "text: give chat records as JSON Lines or parquet")


def test_json_lines_of_lists_name_the_first_line(kgpt2_cli, pydoc_tokenizer_dir, tmp_path):
    """"lists.jsonl:2: invalid JSON (Extra data)" blamed the valid second line."""
    from kgpt2.data.preference_pairs import read_preferences

    (tmp_path / "lists.jsonl").write_text("\n[1,2]\n[3,4]\n")
    result = kgpt2_cli("prepare", "--source", "lists.jsonl", "--out", "o", "--tokenizer", pydoc_tokenizer_dir,
                       cwd=tmp_path)
    assert result.returncode == 2
    said = "lists.jsonl:2: a JSON list, not an object (each line of JSON Lines must be one record {...})"
    assert result.stderr.strip().splitlines()[-1] == f"kgpt2: error: {said}"
    with pytest.raises(UserError, match=f"^{tmp_path}/" + said.replace("(", r"\(").replace(")", r"\)")
                       .replace("{...}", r"\{\.\.\.\}") + "$"):
        read_preferences(tmp_path / "lists.jsonl")


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_quiet_prepare_prints_only_its_result(kgpt2_cli, pydoc_tokenizer_dir, tmp_path, where):
    args = ["prepare", "--source", "pydoc", "--out", "o", "--tokenizer", pydoc_tokenizer_dir]
    result = kgpt2_cli(*(["-q", *args] if where == "before" else [*args, "-q"]), cwd=tmp_path)
    assert result.returncode == 0 and "shards in o" in result.stdout
    assert result.stderr == ""  # no tqdm bar
