"""A newcomer's `kgpt2 generate --max-length 1000` on a small model: the context cuts the text short, and says so
once, as it does for `--max-new-tokens` (it used to give fewer tokens without a word)."""

import pytest

from kgpt2.generate import Generator, Settings

pytestmark = pytest.mark.backend

PROMPT = "The assert statement"


def test_max_length_beyond_the_context_is_said_once_per_setting(loaded, caplog):
    model, tokenizer, cfg = loaded

    class NeverEnds:  # end-of-text never matches, so the length is the context's
        eos_id = -1
        decode = tokenizer.decode

    g = Generator(model, NeverEnds())
    ids = tokenizer.encode(PROMPT)
    context = cfg.model.max_sequence_length
    asked = Settings(sampler="greedy", max_length=4 * context)
    with caplog.at_level("INFO", logger="kgpt2"):
        assert len(g.generate_ids(ids, asked)) == context - len(ids)
        g.generate_ids(ids, asked)  # the same setting again: nothing more said
        g.generate_ids(ids, Settings(sampler="greedy", max_length=context))  # fits: nothing said
    assert [r.getMessage() for r in caplog.records] == [
        f"max length {4 * context} asked (prompt and new tokens), {context} fit: the model's context is {context} "
        f"tokens, the prompt {len(ids)}, so {context - len(ids)} new at most"]
