"""`kgpt2 prepare --source DIR` where DIR is a parent folder of several datasets, and what prepare says it reads."""

import json
import shutil

import pytest

from kgpt2.data.sources import detect_format, open_source
from kgpt2.errors import UserError

pytestmark = pytest.mark.backend_neutral  # format detection and shards, no Keras


@pytest.fixture
def parent(tmp_path, shared_data):
    """A small copy of ../shared/data's layout: SumPubMed and MemSum under pubmed/, Alpaca JSON, Shakespeare."""
    root = tmp_path / "data"
    memsum, sumpubmed = root / "pubmed" / "memsum_pubmed_300", root / "pubmed" / "sumpubmed_1000"
    for split in ("train", "val", "test"):
        lines = (shared_data / "pubmed" / "memsum_pubmed_300" / f"{split}.jsonl").open().readlines()[:2]
        memsum.mkdir(parents=True, exist_ok=True)
        (memsum / f"{split}.jsonl").write_text("".join(lines))
    for sub, name in (("line_text", "text"), ("abstract", "abstract")):
        (sumpubmed / sub).mkdir(parents=True)
        for i in (1, 2):
            shutil.copy(shared_data / "pubmed" / "sumpubmed_1000" / sub / f"{name}_{i}.txt", sumpubmed / sub)
    (root / "alpaca").mkdir()
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:5]
    (root / "alpaca" / "alpaca_5.json").write_text(json.dumps(records))
    (root / "shakespeare").mkdir()
    (root / "shakespeare" / "input.txt").write_text((shared_data / "shakespeare" / "input.txt").read_text()[:3000])
    return root


def test_a_parent_folder_of_datasets_is_refused_naming_each(parent, tmp_path, kgpt2_cli, shared_data):
    """It was read as one folder of .txt files, silently: SumPubMed's abstracts became articles of their own beside
    Shakespeare, and the MemSum and Alpaca files were skipped without a word (exit 0, 5 "articles"). Now one
    sentence names each dataset as its format, before any tokenizer is loaded or anything is written."""
    r = kgpt2_cli("prepare", "--source", "data", "--out", "shards", "--tokenizer", shared_data / "gpt2-tokenizer",
                  cwd=tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (
        "kgpt2: error: 'data' holds several datasets (alpaca/alpaca_5.json as alpaca, pubmed/memsum_pubmed_300/ as "
        "papers, pubmed/sumpubmed_1000/ as sumpubmed, shakespeare/ as text), and reading its .txt files as one folder "
        "would mix or skip them; give one of them as --source (--format folder reads its .txt files as one folder "
        "all the same)\n")
    assert not (tmp_path / "shards").exists()
    with pytest.raises(UserError, match=r"^'\S+/pubmed' holds several datasets \(memsum_pubmed_300/ as papers, "
                                        r"sumpubmed_1000/ as sumpubmed\)"):
        detect_format(str(parent / "pubmed"))


def test_one_nested_dataset_is_named_and_a_folder_of_text_folders_is_read(tmp_path, shared_data):
    one = tmp_path / "one"
    (one / "sub").mkdir(parents=True)
    shutil.copy(shared_data / "pubmed" / "memsum_pubmed_300" / "val.jsonl", one / "sub")
    with pytest.raises(UserError, match=r"holds a dataset \(sub/ as papers\), .* would mix or skip it; give it as "):
        detect_format(str(one))
    texts = tmp_path / "texts"  # text grouped in subfolders, no other format: what the folder format is for
    for name in ("a/x.txt", "b/y.txt", "z.txt"):
        (texts / name).parent.mkdir(parents=True, exist_ok=True)
        (texts / name).write_text(f"Some text of {name}.")
    assert detect_format(str(texts)) == "folder" and len(list(open_source(texts))) == 3


def test_a_format_given_reads_the_folder_and_prepare_says_what_it_read(parent, tmp_path, kgpt2_cli, shared_data):
    """--format folder reads the .txt files all the same; and prepare says which format a folder was read as and
    how many files it holds (it said nothing of it), before its progress line."""
    tok = shared_data / "gpt2-tokenizer"
    r = kgpt2_cli("prepare", "--source", "data", "--format", "folder", "--out", "all", "--tokenizer", tok, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "kgpt2: reading 'data' as folder: 5 .txt files under it, one document each\n" in r.stderr
    said = {
        "pubmed/sumpubmed_1000": "kgpt2: reading 'data/pubmed/sumpubmed_1000' as sumpubmed: 2 articles (line_text/)",
        "pubmed/memsum_pubmed_300": "kgpt2: reading 'data/pubmed/memsum_pubmed_300' as papers: test.jsonl, "
                                    "train.jsonl, val.jsonl (their splits kept)",
    }
    for source, line in said.items():
        r = kgpt2_cli("prepare", "--source", f"data/{source}", "--out", source.replace("/", "-"), "--tokenizer", tok,
                      cwd=tmp_path)
        assert r.returncode == 0 and r.stderr.splitlines()[0] == line, r.stderr
    r = kgpt2_cli("prepare", "--source", "data/alpaca/alpaca_5.json", "--out", "alpaca", "--tokenizer", tok,
                  cwd=tmp_path)
    assert r.returncode == 0 and "reading" not in r.stderr  # a file: its name and first record say its format
