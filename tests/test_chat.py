"""Chat data: the `messages` format, the ChatML-style `chat` template, loss on assistant turns only."""

import json

import numpy as np
import pytest

from kgpt2.errors import UserError


def _conversations(shared_data, n=40):
    """Two-turn conversations built from real Alpaca records: system, user, assistant, user, assistant."""
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:2 * n]
    out = []
    for a, b in zip(records[::2], records[1::2]):
        out.append({"messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": (a["instruction"] + "\n" + a["input"]).strip()},
            {"role": "assistant", "content": a["output"]},
            {"role": "user", "content": b["instruction"]},
            {"role": "assistant", "content": b["output"]}]})
    return out


def test_chat_segments_train_only_assistant_turns_and_use_the_end_of_text_token(pydoc_tokenizer):
    from kgpt2.templates import chat_segments, encode_segments, prompt_ids

    tok = pydoc_tokenizer
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a loop."},
             {"role": "assistant", "content": "for"}, {"role": "user", "content": "Another?"},
             {"role": "assistant", "content": "while"}]
    ids, mask = encode_segments(tok, chat_segments(turns, add_generation_prompt=False))
    ids, mask = np.array(ids), np.array(mask)
    assert len(ids) == len(mask)
    eos = np.flatnonzero(ids == tok.eos_id)
    assert len(eos) == 5 and eos[-1] == len(ids) - 1  # one end-of-text token closes each turn
    trained = ids[mask == 1]
    # The loss covers exactly the assistant contents and the end-of-text closing each.
    assert trained.tolist() == tok.encode("for") + [tok.eos_id] + tok.encode("while") + [tok.eos_id]
    assert "<|endoftext|>" not in tok.decode([i for i in ids.tolist() if i != tok.eos_id])
    # Generation is prompted with the same ids up to an open assistant header.
    prompt = prompt_ids(tok, "Name a loop.", "chat")
    assert prompt.count(tok.eos_id) == 1 and tok.decode(prompt[prompt.index(tok.eos_id) + 1:]) == "\n<|assistant|>\n"
    assert prompt[:prompt.index(tok.eos_id)] == tok.encode("<|user|>\nName a loop.")


def test_messages_are_prepared_with_the_loss_on_assistant_turns(tmp_path, shared_data, pydoc_tokenizer):
    from kgpt2.data.shards import ShardSet, prepare
    from kgpt2.data.sources import detect_format

    tok = pydoc_tokenizer
    conversations = _conversations(shared_data)
    src = tmp_path / "chat.jsonl"
    lines = [json.dumps(c) for c in conversations]
    lines.insert(3, json.dumps({"messages": [{"role": "user", "content": "no answer"}]}))
    src.write_text("\n".join(lines) + "\n")
    assert detect_format(str(src)) == "messages"
    manifest = prepare(str(src), tmp_path / "shards", tok, splits="train", progress=False)
    split = ShardSet(tmp_path / "shards").split("train")
    assert split.num_articles == len(conversations)  # the conversation without an assistant turn is skipped
    assert split.mask is not None and manifest is not None
    want = sum(len(tok.encode(m["content"].strip())) + 1 for c in conversations for m in c["messages"]
               if m["role"] == "assistant")
    assert int(np.asarray(split.mask).sum()) == want
    tokens, mask = np.asarray(split.tokens), np.asarray(split.mask)
    assert np.all(tokens[mask == 1][tokens[mask == 1] != tok.eos_id] >= 0)
    first = split.article_tokens(0)
    assert tok.decode(first[:len(tok.encode("<|system|>\nYou are"))]) == "<|system|>\nYou are"


def test_bad_messages_are_one_clear_error(tmp_path, pydoc_tokenizer):
    from kgpt2.data.shards import prepare

    src = tmp_path / "chat.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "robot", "content": "beep"}]}) + "\n")
    with pytest.raises(UserError, match="message 1 needs a role"):
        prepare(str(src), tmp_path / "out", pydoc_tokenizer, splits="train", progress=False)
    assert not (tmp_path / "out").exists()
