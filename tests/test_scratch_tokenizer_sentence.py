"""A from-scratch model without a tokenizer is told every form of tokenizer folder kgpt2 reads, and how to make one.

Before: "a from-scratch model needs model.tokenizer (a directory with vocabulary.json + merges.txt)", though
OpenAI's own GPT-2 files (encoder.json + vocab.bpe), vocab.json + merges.txt, a tokenizer.json and a character
vocabulary are read as well, and `kgpt2 tokenizer train` makes one.
"""

import pytest

pytestmark = pytest.mark.backend_neutral  # refused before any model is built

SENTENCE = ("kgpt2: error: a from-scratch model needs a tokenizer (model.tokenizer; kgpt2 prepare: --tokenizer): a "
            "folder with vocabulary.json + merges.txt, vocab.json + merges.txt, OpenAI's encoder.json + vocab.bpe, a "
            "Hugging Face tokenizer.json or a char_vocabulary.json, or a KerasHub preset or kgpt2 run holding one "
            "(`kgpt2 tokenizer train --source TEXT --out DIR` makes one)")


def test_prepare_for_a_scratch_model_names_every_tokenizer_form(tmp_path, kgpt2_cli):
    (tmp_path / "a.txt").write_text("The with statement wraps a block.\n")
    r = kgpt2_cli("prepare", "--source", "a.txt", "--out", "shards", "--preset", "scratch", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == SENTENCE
    assert not (tmp_path / "shards").exists()


def test_the_forms_it_names_are_read(tmp_path, shared_data, pydoc_tokenizer):
    """OpenAI's encoder.json + vocab.bpe (the shared gpt2-tokenizer folder), vocab.json + merges.txt and a character
    vocabulary load as `model.tokenizer` of a scratch model."""
    from kgpt2.config import ModelConfig
    from kgpt2.model.char_tokenizer import CharTokenizer
    from kgpt2.model.models import load_tokenizer

    assert load_tokenizer(ModelConfig(preset="scratch", tokenizer=str(shared_data / "gpt2-tokenizer"))).vocab_size \
        == 50257
    saved = pydoc_tokenizer.save(tmp_path / "bpe")
    hf_names = tmp_path / "hf"
    hf_names.mkdir()
    (hf_names / "vocab.json").write_bytes((saved / "vocabulary.json").read_bytes())
    (hf_names / "merges.txt").write_bytes((saved / "merges.txt").read_bytes())
    assert load_tokenizer(ModelConfig(preset="scratch", tokenizer=str(hf_names))).hash == pydoc_tokenizer.hash
    chars = CharTokenizer.train(["abc"]).save(tmp_path / "chars")
    assert isinstance(load_tokenizer(ModelConfig(preset="scratch", tokenizer=str(chars))), CharTokenizer)


def test_pretrain_init_without_a_tokenizer_says_the_same_sentence(tmp_path, kgpt2_cli):
    """`kgpt2 pretrain init` (kgpt2.model.scratch.init_preset) had its own, older copy: "a from-scratch model needs
    model.tokenizer (a directory written by `kgpt2 tokenizer train`)"; it now takes load_tokenizer's."""
    r = kgpt2_cli("pretrain", "init", "--out", "preset", "model.preset=scratch", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == SENTENCE
    assert not (tmp_path / "preset").exists()
