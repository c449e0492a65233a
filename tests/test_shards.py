"""prepare: real corpora -> uint16 shards that decode back to the text, atomically."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kgpt2.data import sources
from kgpt2.data.shards import ShardSet, assign_split, prepare
from kgpt2.data.sources import open_source
from kgpt2.errors import UserError

pytestmark = pytest.mark.backend_neutral  # data preparation (shards)


def round_trips(out: Path, tokenizer, src) -> int:
    """Every article in the shard set decodes to its source text; returns the count."""
    texts = {d.id: d.text for d in src}
    shards, n = ShardSet(out), 0
    for name in ("train", "validation", "test"):
        split = shards.split(name)
        assert split.tokens.dtype == np.uint16
        assert len(split.offsets) == split.num_articles + 1 and split.offsets[-1] == split.num_tokens
        for i, doc_id in enumerate(split.ids()):
            tokens = split.article_tokens(i)
            assert tokens[-1] == tokenizer.eos_id
            assert tokenizer.decode(tokens[:-1]) == texts[doc_id], doc_id
            n += 1
    return n


@pytest.fixture(scope="module")
def sumpubmed_20(tmp_path_factory, shared_data):
    """The first 20 SumPubMed articles in their folder layout (a temporary copy)."""
    root = tmp_path_factory.mktemp("sumpubmed") / "sumpubmed_20"
    for sub, name in (("line_text", "text_{}.txt"), ("abstract", "abstract_{}.txt")):
        (root / sub).mkdir(parents=True)
        for i in range(1, 21):
            shutil.copy(shared_data / "pubmed" / "sumpubmed_1000" / sub / name.format(i), root / sub)
    return root


@pytest.mark.parametrize("kind", ["memsum", "sumpubmed", "shakespeare", "alpaca", "preferences", "table"])
def test_real_sources_round_trip(kind, tmp_path, shared_data, gpt2_tokenizer, sumpubmed_20):
    pubmed = shared_data / "pubmed"
    path, options = {
        "memsum": (pubmed / "memsum_pubmed_300" / "val.jsonl", {}),
        "sumpubmed": (sumpubmed_20, {}),
        "shakespeare": (shared_data / "shakespeare" / "input.txt", {"separator": "\n\n"}),
        "alpaca": (shared_data / "alpaca" / "alpaca_5000.json", {}),
        "preferences": (shared_data / "preferences" / "llms-from-scratch-instruction-data-with-preference.json", {}),
        "table": (pubmed / "memsum_pubmed_300" / "test.jsonl", {"fmt": "table", "text_column": "summary"}),
    }[kind]
    if kind == "table":  # a JSONL table whose text column holds strings
        table = tmp_path / "abstracts.jsonl"
        with open(path, encoding="utf-8") as f, open(table, "w", encoding="utf-8") as out:
            for line in f:
                out.write(json.dumps({"summary": " ".join(json.loads(line)["summary"])}) + "\n")
        path = table
    src = open_source(path, **options)
    m = prepare(src, tmp_path / "shards", gpt2_tokenizer, progress=False)
    assert m["dtype"] == "uint16" and m["skipped"]["total"] == src.stats.total_skipped
    assert round_trips(tmp_path / "shards", gpt2_tokenizer, src) == src.stats.read > 0


def test_own_splits_or_seeded_hash_splits(tmp_path, shared_data, gpt2_tokenizer):
    memsum = shared_data / "pubmed" / "memsum_pubmed_300"
    own = prepare(memsum, tmp_path / "own", gpt2_tokenizer, contents="abstract", progress=False)
    assert {k: v["num_articles"] for k, v in own["splits"].items()} == {"train": 100, "validation": 100, "test": 100}
    assert ShardSet(tmp_path / "own").split("validation").ids()[:2] == ["val:1", "val:2"]
    a = prepare(memsum, tmp_path / "a", gpt2_tokenizer, contents="abstract", splits="hash", seed=1, progress=False)
    b = prepare(memsum, tmp_path / "b", gpt2_tokenizer, contents="abstract", splits="hash", seed=1, progress=False)
    c = prepare(memsum, tmp_path / "c", gpt2_tokenizer, contents="abstract", splits="hash", seed=2, progress=False)
    assert a["content_hash"] == b["content_hash"] != c["content_hash"]
    train_ids = ShardSet(tmp_path / "a").split("train").ids()
    assert all(assign_split(i, 1, (0.9, 0.05, 0.05)) == "train" for i in train_ids)
    assert 240 <= len(train_ids) <= 295  # ~90% of 300
    with pytest.raises(UserError, match="must be three non-negative numbers"):
        prepare(memsum, tmp_path / "d", gpt2_tokenizer, fractions=(0.5, 0.2), progress=False)


def test_rerun_is_a_no_op_and_a_changed_input_rebuilds(tmp_path, shared_data, gpt2_tokenizer):
    corpus = tmp_path / "val.jsonl"
    shutil.copy(shared_data / "pubmed" / "memsum_pubmed_300" / "val.jsonl", corpus)
    out = tmp_path / "shards"
    first = prepare(corpus, out, gpt2_tokenizer, progress=False)
    stamp = (out / "manifest.json").stat().st_mtime_ns, (out / "train.bin").stat().st_mtime_ns
    again = prepare(corpus, out, gpt2_tokenizer, progress=False)
    assert again == first
    assert ((out / "manifest.json").stat().st_mtime_ns, (out / "train.bin").stat().st_mtime_ns) == stamp
    corpus.write_bytes(corpus.read_bytes() + b"\n")  # touched: same content, new signature
    rebuilt = prepare(corpus, out, gpt2_tokenizer, progress=False)
    assert rebuilt["input_signature"] != first["input_signature"]
    assert rebuilt["content_hash"] == first["content_hash"]  # identical shards


def test_folder_signature_counts_only_read_files_and_out_cannot_be_inside(tmp_path, pydoc_tokenizer):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("The first document. " * 20)
    (folder / "sub" / "b.txt").write_text("The second document. " * 20)
    out = tmp_path / "shards"
    first = prepare(folder, out, pydoc_tokenizer, fmt="folder", splits="train", progress=False)
    (folder / "notes.md").write_text("not an input")  # a file the folder reader does not read
    assert prepare(folder, out, pydoc_tokenizer, fmt="folder", splits="train", progress=False) == first
    (folder / "sub" / "b.txt").write_text("Changed. " * 20)
    assert prepare(folder, out, pydoc_tokenizer, fmt="folder", splits="train",
                   progress=False)["input_signature"] != first["input_signature"]
    with pytest.raises(UserError, match="inside the source folder"):
        prepare(folder, folder / "shards", pydoc_tokenizer, fmt="folder", progress=False)


def test_a_folder_is_listed_once_per_prepare_and_again_by_the_next(tmp_path, pydoc_tokenizer, sumpubmed_20,
                                                                  monkeypatch, caplog):
    """Signature, "reading ... as" line, progress count and reader took a listing each (4 walks of a Drive folder
    of 120,000 articles); now one, which a second prepare of the same Source takes again."""
    listings = []
    walk, glob = sources.os.walk, Path.glob

    def listed(path):  # the source trees' listings only, not those of the shard folders prepare writes
        if any(Path(path).is_relative_to(root) for root in (folder, sumpubmed_20)):
            listings.append(Path(path))

    monkeypatch.setattr(sources.os, "walk", lambda *a, **k: listed(a[0]) or walk(*a, **k))
    monkeypatch.setattr(Path, "glob", lambda self, pattern: listed(self) or glob(self, pattern))
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("The first document. " * 20)
    src = open_source(folder, "folder")
    caplog.set_level("INFO", logger="kgpt2")
    first = prepare(src, tmp_path / "shards", pydoc_tokenizer, splits="train", progress=False)
    assert listings == [folder] and first["splits"]["train"]["num_articles"] == 1
    assert "1 .txt file under it" in caplog.text
    (folder / "b.txt").write_text("The second document. " * 20)
    listings.clear()
    second = prepare(src, tmp_path / "shards", pydoc_tokenizer, splits="train", progress=False)
    assert listings == [folder] and second["splits"]["train"]["num_articles"] == 2
    listings.clear()
    sumpubmed = prepare(open_source(sumpubmed_20), tmp_path / "sumpubmed", pydoc_tokenizer, progress=False)
    assert listings == [sumpubmed_20 / "line_text", sumpubmed_20 / "abstract"]  # once each
    assert sum(s["num_articles"] for s in sumpubmed["splits"].values()) == 20


def test_empty_corpus_is_an_error_and_leaves_nothing(tmp_path, pydoc_tokenizer):
    corpus = tmp_path / "train.jsonl"
    corpus.write_text('{"article_id": "a", "article_text": [], "abstract_text": []}\n{"truncat\n')
    with pytest.raises(UserError, match=r"holds no documents \(2 records skipped, e.g. .*train.jsonl:2: invalid"):
        prepare(corpus, tmp_path / "out", pydoc_tokenizer, fmt="papers", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]


def test_one_long_text_all_in_train_is_told_how_to_hold_some_out(tmp_path, pydoc_tokenizer, caplog):
    """A novel in one file is one document, which "auto" put whole in one split: in test, training then said only
    "the train split holds no articles"; in train, it reported no validation loss. Nothing was said at prepare."""
    novel = tmp_path / "novel.txt"
    novel.write_text("".join(d.text for d in open_source("pydoc"))[:20_000])
    with caplog.at_level("WARNING", logger="kgpt2"):
        prepare(novel, tmp_path / "auto", pydoc_tokenizer, progress=False)
    assert [r.getMessage() for r in caplog.records] == [  # the one document hashed to test
        "train and validation hold no articles (1 document in all, each split whole): there is nothing to train on "
        "and training would report no validation loss; prepare again with --splits tail:0.1 to hold out the last "
        "10% of each document's text, or from more documents"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="kgpt2"):
        held_out = prepare(novel, tmp_path / "tail", pydoc_tokenizer, splits="tail:0.1", progress=False)
        prepare(novel, tmp_path / "train", pydoc_tokenizer, splits="train", progress=False)  # asked for: no note
    assert held_out["splits"]["validation"]["num_articles"] == 1 and caplog.records == []


def test_training_on_shards_without_a_train_split_says_why(tmp_path, pydoc_tokenizer, pydoc_tokenizer_dir, capsys):
    """It said only "the train split holds no articles"; and nothing of a run is made."""
    from kgpt2.cli import main

    novel = tmp_path / "novel.txt"
    novel.write_text("".join(d.text for d in open_source("pydoc"))[:20_000])  # hashes to test, as above
    prepare(novel, tmp_path / "shards", pydoc_tokenizer, progress=False)
    assert main(["-q", "train", "model.preset=scratch", f"model.tokenizer={pydoc_tokenizer_dir}",
                 f"data.shards={tmp_path / 'shards'}", f"checkpoints_root={tmp_path / 'runs'}"]) == 2
    assert capsys.readouterr().err.startswith(f"kgpt2: error: the shards in {tmp_path / 'shards'}: train and "
                                              "validation hold no articles (1 document in all, each split whole)")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # 10 MB of text: ~5 s alone, 15 s on a busy machine
def test_one_enormous_document(tmp_path, shared_data, gpt2_tokenizer):
    """A 10 MB article (real text repeated) in one JSON line tokenises whole."""
    sentences = json.loads(open(shared_data / "pubmed" / "memsum_pubmed_300" / "val.jsonl").readline())["text"]
    body, size = [], 0
    while size < 10_000_000:
        body += sentences
        size += sum(len(s) + 1 for s in sentences)
    corpus = tmp_path / "train.jsonl"
    corpus.write_text(json.dumps({"article_id": "huge", "article_text": body, "abstract_text": []}) + "\n"
                      + json.dumps({"article_id": "small", "article_text": sentences[:3], "abstract_text": []}) + "\n")
    m = prepare(corpus, tmp_path / "out", gpt2_tokenizer, progress=False)
    shards = ShardSet(tmp_path / "out").split("train")
    assert shards.ids() == ["huge", "small"] and m["splits"]["train"]["num_tokens"] > 2_000_000
    assert gpt2_tokenizer.decode(shards.article_tokens(0)[:-1]) == "\n".join(s.strip() for s in body)


def test_failed_prepare_leaves_the_old_shard_set_and_no_half_written_one(tmp_path, pydoc_tokenizer, monkeypatch):
    out = tmp_path / "shards"
    good = prepare("pydoc", out, pydoc_tokenizer, progress=False)

    def failing_reader(src):
        for i, doc in enumerate(sources._read_pydoc(src)):
            if i == 40:
                raise OSError("disk went away while reading")
            yield doc

    monkeypatch.setitem(sources._READERS, "pydoc", failing_reader)
    with pytest.raises(UserError, match="disk went away"):  # an OS error: one sentence
        prepare("pydoc", out, pydoc_tokenizer, splits="hash", seed=7, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]  # no temp dir left behind
    assert json.loads((out / "manifest.json").read_text())["content_hash"] == good["content_hash"]
    with pytest.raises(UserError):
        prepare("pydoc", tmp_path / "fresh", pydoc_tokenizer, progress=False)
    assert not (tmp_path / "fresh").exists()


def test_cli_prepare_reports_skipped_records(tmp_path, shared_data, capsys):
    from kgpt2.cli import build_parser

    def prepare_verb(*argv):  # the verb's handler, without main()'s Keras import
        args = build_parser().parse_args(["prepare", *argv, "--tokenizer", str(shared_data / "gpt2-tokenizer")])
        args.handler(args)

    corpus = tmp_path / "val.jsonl"
    lines = open(shared_data / "pubmed" / "memsum_pubmed_300" / "val.jsonl", "rb").readlines()[:5]
    corpus.write_bytes(b"".join(lines[:2]) + b'{"text": ["cut' + b"\n" + b"".join(lines[2:]))
    prepare_verb("--source", str(corpus), "--out", str(tmp_path / "out"), "--contents", "abstract")
    out = capsys.readouterr().out
    assert "validation:        5 articles" in out
    assert "skipped 1 record: {'invalid or truncated JSON': 1}" in out and f"{corpus}:3" in out
    with pytest.raises(UserError, match="nope.jsonl' does not exist"):
        prepare_verb("--source", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o2"))


@pytest.mark.slow  # two subprocesses import `datasets` / `transformers`
def test_benchmark_script_smoke(tmp_path, shared_data):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "prepare_throughput.py"
    result = subprocess.run([sys.executable, str(script), "--repeat", "1", "--limit", "40",
                             "--workdir", str(tmp_path), "--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert {r["implementation"] for r in rows} >= {"kgpt2 prepare", "datasets.map"}
    assert all(r["tokens"] > 0 and r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in rows)
    assert len({r["tokens"] for r in rows}) == 1  # same input, same token count (both exact)


def test_a_split_it_does_not_have_is_named_with_the_ones_it_has(pydoc_shards):
    """`kgpt2 evaluate --split valid` said "has no split 'valid'" and left the user to guess the names."""
    from kgpt2.data.shards import ShardSet

    with pytest.raises(UserError, match=r"has no split 'valid' \(it has: train, validation, test\)$"):
        ShardSet(pydoc_shards).split("valid")
