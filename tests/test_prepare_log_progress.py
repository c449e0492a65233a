"""A long `kgpt2 prepare` into a log (`> log.txt 2>&1`, nohup) says a line about once a minute, as `kgpt2 train`
does: before, it was silent from its first line to its last, however long it ran. The minute is train's
(`kgpt2.training.pace.EVERY_S`), patched to 0 here so each batch after the first is a line.
"""

import re

import pytest

pytestmark = pytest.mark.backend_neutral  # tokenising and writing shards, no Keras

LINE = re.compile(r"kgpt2: prepare \S+: ([\d,]+)( of [\d,]+)? documents, ([\d,]+) tokens written, "
                  r"[\d,]+ tokens/s(, about .+ left)?$")


def _progress(stderr: str) -> list[re.Match]:
    return [m for line in stderr.splitlines() if (m := LINE.match(line))]


def test_a_prepare_in_a_log_says_how_far_it_is(shared_data, kgpt2_cli, tmp_path, monkeypatch):
    from kgpt2.training import pace

    tokenizer = shared_data / "gpt2-tokenizer"
    quick = kgpt2_cli("prepare", "--source", shared_data / "pubmed" / "sumpubmed_1000", "--out", "quick",
                      "--tokenizer", tokenizer, cwd=tmp_path)
    assert quick.returncode == 0 and not _progress(quick.stderr)  # under a minute: the last line alone

    monkeypatch.setattr(pace, "EVERY_S", 0.0)
    r = kgpt2_cli("prepare", "--source", shared_data / "pubmed" / "sumpubmed_1000", "--out", "shards",
                  "--tokenizer", tokenizer, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = _progress(r.stderr)
    assert len(lines) == 3, r.stderr  # 1,000 articles: 4 batches of 256, the first is no line (no rate yet)
    docs = [int(m[1].replace(",", "")) for m in lines]
    tokens = [int(m[3].replace(",", "")) for m in lines]
    assert docs == [512, 768, 1000] and tokens == sorted(tokens)  # written, not read ahead by the next batch
    assert all(m[2] == " of 1,000" and m[4] for m in lines)  # SumPubMed's files count its articles: a time left
    assert "\r" not in r.stderr and r.stderr.rstrip().splitlines()[-1].startswith("kgpt2: prepare ")

    papers = kgpt2_cli("prepare", "--source", shared_data / "pubmed" / "memsum_pubmed_300", "--out", "papers",
                       "--tokenizer", tokenizer, "--splits", "hash", cwd=tmp_path)
    assert papers.returncode == 0 and len(_progress(papers.stderr)) == 1  # 300 articles: 2 batches
    assert not any(m[2] or m[4] for m in _progress(papers.stderr))  # JSON Lines: no count before reading them


def test_the_line_waits_a_minute_on_the_clock(tmp_path):
    from kgpt2.data.shard_writer import LogLines

    said, clock = [], iter([0.0, 1.0, 59.0, 61.0, 62.0, 121.5]).__next__
    lines = LogLines("corpus", 400, say=said.append, clock=clock)
    for docs, tokens in ((1, 100), (2, 200), (100, 6_100), (101, 6_200), (200, 12_100)):
        lines.update(docs, tokens)
    assert said == ["prepare corpus: 100 of 400 documents, 6,100 tokens written, 100 tokens/s, about 3 min left",
                    "prepare corpus: 200 of 400 documents, 12,100 tokens written, 100 tokens/s, about 2 min left"]
