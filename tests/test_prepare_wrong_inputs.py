"""The wrong thing given to `kgpt2 prepare`, as a user gives it: one sentence that says what it is, exit 2.

Before: the GPT-2 tokenizer folder as --source was "holds a dataset (encoder.json as papers) ... give it as
--source", which it already was; a text, a CSV or a JSON array read with a JSON Lines --format was "holds no
documents (32777 records skipped, e.g. x:1: invalid or truncated JSON ...)" with nothing on what to do.
"""

import json

import pytest

pytestmark = pytest.mark.backend_neutral  # formats and sentences, no Keras


def _prepare(kgpt2_cli, tmp_path, tokenizer, *args):
    r = kgpt2_cli("prepare", *args, "--out", "shards", "--tokenizer", tokenizer, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "shards").exists()
    return r.stderr


def test_a_tokenizer_folder_as_source_is_named_a_tokenizer(shared_data, kgpt2_cli, tmp_path):
    tokenizer = shared_data / "gpt2-tokenizer"
    assert _prepare(kgpt2_cli, tmp_path, tokenizer, "--source", tokenizer) == (
        f"kgpt2: error: '{tokenizer}' is a tokenizer (vocab.bpe or merges.txt), not a corpus; pass it as --tokenizer, "
        "and the text to tokenise as --source\n")


def test_a_file_that_is_not_json_lines_read_as_json_lines_says_so(shared_data, kgpt2_cli, tmp_path):
    rows = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:3]
    (tmp_path / "alpaca.json").write_text(json.dumps(rows))  # a JSON array: one line, no object on it
    (tmp_path / "notes.txt").write_text("".join(f"Line {i} of a plain text.\n" for i in range(1500)))
    (tmp_path / "rows.csv").write_text("instruction,input,output\nSay hi,,hi\n")
    tokenizer = shared_data / "gpt2-tokenizer"
    hint = "; it is not JSON Lines (one JSON object per line): leave --format out to detect its format\n"
    for source, fmt, skipped in (("alpaca.json", "papers", "1 record skipped, e.g. alpaca.json:1: not a JSON object"),
                                 ("notes.txt", "papers", "1,500 records skipped, e.g. notes.txt:1: invalid"),
                                 ("rows.csv", "papers", "2 records skipped, e.g. rows.csv:1: invalid")):
        said = _prepare(kgpt2_cli, tmp_path, tokenizer, "--source", source, "--format", fmt)
        assert said.startswith(f"kgpt2: error: source '{source}' holds no documents ({skipped}"), said
        assert said.endswith(hint) and said.count("\n") == 1, said


def test_an_empty_folder_of_papers_or_sumpubmed_says_only_its_error(pydoc_tokenizer_dir, kgpt2_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    for fmt in ("papers", "sumpubmed"):
        said = _prepare(kgpt2_cli, tmp_path, pydoc_tokenizer_dir, "--source", "empty", "--format", fmt)
        assert said.startswith("kgpt2: error: ") and said.count("\n") == 1, said  # no "reading 'empty' as ..." first


def test_format_pydoc_with_another_source_is_refused(shared_data, kgpt2_cli, tmp_path):
    """--format pydoc read CPython's documentation and left the --source given unread, without a word."""
    (tmp_path / "notes.txt").write_text("My own notes, the corpus meant.\n")
    assert _prepare(kgpt2_cli, tmp_path, shared_data / "gpt2-tokenizer", "--source", "notes.txt", "--format",
                    "pydoc") == ("kgpt2: error: --format pydoc reads CPython's own documentation, not 'notes.txt'; "
                                 "give --source pydoc alone, or leave --format out to read 'notes.txt'\n")
