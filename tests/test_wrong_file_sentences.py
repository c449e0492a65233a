"""The wrong file or folder given to a command: one sentence saying what it is and what the command takes.

Each was a misleading line users met: a shard set's manifest.json given to `kgpt2 align` was "manifest.json:1:
invalid JSON" (it is valid JSON, read as JSON Lines); a shard set folder "holds no votes.jsonl"; a text with a
character the character tokenizer lacks named neither the file nor the way out; `--out ''` was "export target
'.' already exists".
"""

import json

import pytest

from kgpt2.model.char_tokenizer import CharTokenizer

pytestmark = pytest.mark.backend_neutral  # every refusal comes before a model is built


@pytest.fixture
def shard_set(kgpt2_cli, tmp_path):
    """A real shard set, `kgpt2 prepare`'s output, with a tiny character tokenizer."""
    (tmp_path / "plain.txt").write_text("abc hello\n", encoding="utf-8")
    CharTokenizer.train(["abc hello\n"]).save(tmp_path / "chartok")
    result = kgpt2_cli("prepare", "--source", "plain.txt", "--tokenizer", "chartok", "--out", "shards",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path / "shards"


@pytest.fixture
def align_cli(kgpt2_cli, tiny_preset, tmp_path):
    def run(data):
        return kgpt2_cli("align", f"model.preset={tiny_preset}", f"align.data={json.dumps([data])}",
                         "lora.enabled=false", f"checkpoints_root={tmp_path / 'runs'}", "run=a",
                         "data.sequence_length=32", cwd=tmp_path)
    return run


def _sentence(result) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]  # after any progress bar


ALIGN_TAKES = ("align.data takes preference files (prompt/chosen/rejected JSON Lines, a JSON array or CSV) or a "
               "demo run's folder (its votes.jsonl)")


def test_a_shard_sets_manifest_given_to_align_is_named_prepares_output(shard_set, align_cli):
    assert _sentence(align_cli("shards/manifest.json")) == (
        "kgpt2: error: 'shards/manifest.json' is the manifest of a kgpt2 shard set (what `kgpt2 prepare` writes, "
        f"for `kgpt2 train`: data.shards = \"shards\"), not preference data; {ALIGN_TAKES}")


def test_a_shard_set_folder_given_to_align_is_named_prepares_output(shard_set, align_cli):
    assert _sentence(align_cli("shards")) == (
        "kgpt2: error: 'shards' is a kgpt2 shard set (what `kgpt2 prepare` writes, for `kgpt2 train`: "
        f"data.shards = \"shards\"), not preference data; {ALIGN_TAKES}")


def test_one_pretty_printed_json_document_is_not_called_invalid_json(tmp_path, align_cli):
    (tmp_path / "pairs.json").write_text(json.dumps({"data": [{"prompt": "q", "chosen": "a", "rejected": "b"}]},
                                                    indent=2), encoding="utf-8")
    assert _sentence(align_cli("pairs.json")) == (
        "kgpt2: error: 'pairs.json' is one JSON document (an object over 9 lines), where JSON Lines (one "
        "prompt/chosen/rejected pair per line) or a JSON array of pairs are expected")


def test_broken_json_lines_are_still_named_by_line(tmp_path, align_cli):
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": \n',
                                          encoding="utf-8")
    assert _sentence(align_cli("pairs.jsonl")) == "kgpt2: error: pairs.jsonl:2: invalid JSON"


def test_a_character_the_char_tokenizer_lacks_names_the_file_and_the_command(kgpt2_cli, tmp_path):
    (tmp_path / "accents é.txt").write_text("abc\nStraße\n", encoding="utf-8")
    CharTokenizer.train(["abc hello\n"]).save(tmp_path / "chartok")
    result = kgpt2_cli("prepare", "--source", "accents é.txt", "--tokenizer", "chartok", "--out", "s2",
                       cwd=tmp_path)
    assert _sentence(result) == (
        "kgpt2: error: the document at accents é.txt:1 has the character 'S', which is not in the character "
        "tokenizer's vocabulary (only the characters of the text it was trained on are); train a character "
        "tokenizer on this text too (`kgpt2 tokenizer train --char --source FILES --out NEW_FOLDER`, FILES all "
        "the text it is to read) and prepare with --tokenizer NEW_FOLDER")
    assert not (tmp_path / "s2").exists()
    help_text = kgpt2_cli("tokenizer", "train", "--help").stdout
    assert "--char" in help_text and "--source" in help_text and "--out" in help_text  # the options named exist


@pytest.mark.parametrize("argv, what", [(["export", "--run", "nowhere", "--to", "hf"], "export"),
                                       (["import", "mine.txt", "--tokenizer", "gpt2_base_en"], "import"),
                                       (["tokenizer", "train", "--char", "--source", "mine.txt"], "tokenizer")])
def test_an_empty_out_is_refused_as_empty(kgpt2_cli, tmp_path, argv, what):
    (tmp_path / "mine.txt").write_text("kept")  # the working folder is not empty, so '.' was "already exists"
    result = kgpt2_cli(*argv, "--out", "", cwd=tmp_path)
    assert _sentence(result) == f"kgpt2: error: --out is empty; name a new folder for the {what}"
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
