"""`kgpt2 tokenizer train` on a source that leaves no text, or into a folder it cannot write: one sentence."""

import subprocess

import pytest

pytestmark = pytest.mark.backend_neutral  # tokenizer files only, no model


@pytest.mark.parametrize("content", [b"\n\n\n", b"  \n\t\n", b""])
def test_a_source_of_only_whitespace_is_refused_saying_why(tmp_path, kgpt2_cli, content):
    """nanoGPT would make the vocabulary sorted(set(text)) = ["\\n"]; prepare skips such a document, so kgpt2
    refuses, and said only "holds no text" of a file that visibly holds newlines."""
    (tmp_path / "blank.txt").write_bytes(content)
    result = kgpt2_cli("tokenizer", "train", "--char", "--source", "blank.txt", "--out", "tok", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("source 'blank.txt' holds no text to train a tokenizer on: its document is empty or only whitespace "
            "(newlines, spaces), and `kgpt2 prepare` skips such documents") in result.stderr
    assert not (tmp_path / "tok").exists()


def test_a_source_in_another_encoding_says_how_to_convert_it(tmp_path, kgpt2_cli):
    (tmp_path / "latin.txt").write_bytes("café\n".encode("latin-1"))
    result = kgpt2_cli("tokenizer", "train", "--vocab-size", "300", "--source", "latin.txt", "--out", "tok",
                       cwd=tmp_path)
    assert result.returncode == 2
    assert "latin.txt:1: not UTF-8" in result.stderr and "iconv -f latin1 -t utf-8" in result.stderr


@pytest.fixture
def read_only_folder(tmpfs):
    """A read-only tmpfs mount (root only: chmod would not stop root)."""
    d = tmpfs("ro")
    subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)
    return d


def test_a_read_only_target_is_refused_before_the_training(tmp_path, kgpt2_cli, read_only_folder, monkeypatch):
    """It trained first (minutes on a large corpus), then could not save."""
    from kgpt2 import tokenizer_training

    def no_training(*args, **kwargs):
        raise AssertionError("trained for a target it cannot write")

    monkeypatch.setattr(tokenizer_training.BPETokenizer, "train", no_training)
    (tmp_path / "corpus.txt").write_text("some text to train on\n")
    result = kgpt2_cli("tokenizer", "train", "--vocab-size", "300", "--source", "corpus.txt",
                       "--out", read_only_folder / "tok", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (2, f"kgpt2: error: could not write the tokenizer to "
                                                     f"'{read_only_folder / 'tok'}': folder '{read_only_folder}' "
                                                     "is not writable\n")
