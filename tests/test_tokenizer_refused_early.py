"""`kgpt2 tokenizer train` again into a folder that holds a tokenizer it cannot make: refused before the training
(minutes on a large corpus), not after it, in one sentence, and the folder is left as it was."""

import pytest

pytestmark = pytest.mark.backend_neutral  # tokenizer files only, no model

TEXT = "ROMEO: But, soft! what light through yonder window breaks? Café, naïve.\n" * 40


@pytest.fixture
def trainings(monkeypatch):
    """The trainings run (kind, vocabulary size), the real ones still done."""
    from kgpt2 import tokenizer_training

    seen = []
    bpe, char = tokenizer_training.BPETokenizer.train, tokenizer_training.CharTokenizer.train
    monkeypatch.setattr(tokenizer_training.BPETokenizer, "train",
                        lambda texts, **kw: seen.append(("bpe", kw["vocab_size"])) or bpe(texts, **kw))
    monkeypatch.setattr(tokenizer_training.CharTokenizer, "train", lambda texts: seen.append(("char", 0)) or char(texts))
    return seen


@pytest.mark.parametrize("first, again, held", [
    (["--char"], ["--vocab-size", "300"], "a character tokenizer, not a byte-level BPE of 300 tokens"),
    (["--vocab-size", "300"], ["--char"], "a byte-level BPE of 300 tokens, not a character tokenizer"),
    (["--vocab-size", "300"], ["--vocab-size", "280"], "a byte-level BPE of 300 tokens, not a byte-level BPE of 280 tokens"),
])
def test_another_tokenizer_is_refused_before_training(tmp_path, kgpt2_cli, trainings, first, again, held):
    (tmp_path / "corpus é.txt").write_text(TEXT, encoding="utf-8")
    args = ("tokenizer", "train", "--source", "corpus é.txt", "--out", "tok é")
    assert kgpt2_cli(*args, *first, cwd=tmp_path).returncode == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "tok é").iterdir()}
    trainings.clear()
    result = kgpt2_cli(*args, *again, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (
        2, "", f"kgpt2: error: tokenizer target 'tok é' already holds another tokenizer ({held}; shards and presets "
               "may have been made with it); choose a new directory\n")
    assert trainings == []  # refused before the training
    assert {p.name: p.read_bytes() for p in (tmp_path / "tok é").iterdir()} == before


def test_the_same_command_again_still_trains_and_keeps_the_folder(tmp_path, kgpt2_cli, trainings):
    """A re-run may make the very same tokenizer (a smaller corpus than --vocab-size asked too): it is compared after
    the training, as before."""
    (tmp_path / "corpus.txt").write_text(TEXT, encoding="utf-8")
    args = ("tokenizer", "train", "--vocab-size", "5000", "--source", "corpus.txt", "--out", "tok")
    assert kgpt2_cli(*args, cwd=tmp_path).returncode == 0
    again = kgpt2_cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and trainings == [("bpe", 5000), ("bpe", 5000)]
