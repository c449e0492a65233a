"""`kgpt2 prepare > log.txt 2>&1` (and `kgpt2 quickstart`, which prepares the same way): one plain line, no bar.

Before: tqdm's bar went to stderr whatever it was, so a log held its redraws as carriage-return fragments
("\\rprepare pydoc: 0 docs [00:00, ? docs/s]\\rprepare pydoc: 79 docs [...]"). On a terminal the bar stays.
"""

import io
import logging
import subprocess
import sys

import pytest

pytestmark = pytest.mark.backend_neutral  # tokenising and writing shards, no Keras


def _corpus(tmp_path):
    (tmp_path / "corpus").mkdir()
    for i in range(6):
        (tmp_path / "corpus" / f"d{i}.txt").write_text(f"The with statement {i} wraps a block. " * 4)
    return tmp_path / "corpus"


def test_prepare_into_a_log_writes_one_plain_line_and_no_bar(tmp_path, kgpt2_cli, pydoc_tokenizer_dir):
    _corpus(tmp_path)
    r = kgpt2_cli("prepare", "--source", "corpus", "--out", "shards", "--tokenizer", pydoc_tokenizer_dir, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "docs/s" not in r.stderr
    said = [line for line in r.stderr.splitlines() if line.startswith("kgpt2: prepare corpus:")]
    assert len(said) == 1 and said[0].startswith("kgpt2: prepare corpus: 6 documents, ") and " tokens in " in said[0]

    quiet = kgpt2_cli("prepare", "-q", "--source", "corpus", "--out", "quiet", "--tokenizer", pydoc_tokenizer_dir,
                      cwd=tmp_path)
    assert quiet.returncode == 0 and "\r" not in quiet.stderr and "kgpt2: prepare " not in quiet.stderr  # -q


def test_a_real_log_file_holds_no_carriage_returns(tmp_path, pydoc_tokenizer_dir):
    """The shell's `2> log.txt`: a file descriptor that is no terminal, in a process of its own."""
    _corpus(tmp_path)
    with open(tmp_path / "log.txt", "wb") as log:
        subprocess.run([sys.executable, "-m", "kgpt2.cli", "prepare", "--source", "corpus", "--out", "shards",
                        "--tokenizer", str(pydoc_tokenizer_dir)], cwd=tmp_path, stdout=log, stderr=log, check=True,
                       timeout=300)
    text = (tmp_path / "log.txt").read_text()
    assert "\r" not in text and text.count("kgpt2: prepare corpus: 6 documents, ") == 1


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_stays_and_no_line_is_added(tmp_path, monkeypatch, caplog, pydoc_tokenizer):
    from kgpt2.data.shards import prepare

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with caplog.at_level(logging.INFO, logger="kgpt2"):
        prepare(str(_corpus(tmp_path)), tmp_path / "shards", pydoc_tokenizer, progress=True)
    assert "6 docs" in terminal.getvalue() and "\r" in terminal.getvalue()
    assert not [r for r in caplog.records if r.getMessage().startswith("prepare ")]
