"""Chat data: the `messages` format, the ChatML-style `chat` template, loss on assistant turns only."""

import json

import numpy as np
import pytest

from kgpt2.errors import UserError

pytestmark = pytest.mark.backend_neutral  # chat templates and chat data (token ids), no model


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
    from kgpt2.generation.templates import chat_segments, encode_segments, prompt_ids

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


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a loop."},
                {"role": "assistant", "content": "for"}, {"role": "user", "content": "Another one?"}]


@pytest.mark.parametrize("tokenizer", ["gpt2_tokenizer", "pydoc_tokenizer"])
def test_align_renders_chat_prompts_with_the_ids_train_generate_and_serve_use(tmp_path, request, tokenizer):
    """Preference pairs with chat prompts: one rendering path, end-of-text ids at the separators."""
    from kgpt2.data.examples import encode_example
    from kgpt2.data.instructions import ChatDocument
    from kgpt2.data.preference_pairs import encode_pairs, read_preferences
    from kgpt2.generation.templates import prompt_ids, render_prompt
    from kgpt2.serve import chat_ids
    from kgpt2.serving.votes import make_record

    tok = request.getfixturevalue(tokenizer)
    path = tmp_path / "chat-prefs.jsonl"
    records = [{"messages": CONVERSATION, "chosen": "while", "rejected": "No."},  # messages + answers
               {"prompt": CONVERSATION, "chosen": [{"role": "assistant", "content": "while"}],  # TRL conversational
                "rejected": [{"role": "assistant", "content": "No."}]},
               make_record("Another one?", "while", "No.", "a", "r/base", "r/ckpt-1", {}, template="chat",
                           model_input=render_prompt("Another one?", "chat"))]  # a demo vote in the chat template
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    pairs, _ = read_preferences(path, template="plain")
    assert [p["prompt"] for p in pairs] == [CONVERSATION, CONVERSATION, [{"role": "user", "content": "Another one?"}]]

    for pair in pairs:
        ids, mask = encode_example(tok, pair["prompt"], pair["chosen"])  # what align scores
        # kgpt2 train on the whole conversation (chat data): the same ids, the loss on this answer.
        train_ids, train_mask = ChatDocument("x", "", messages=pair["prompt"] + [
            {"role": "assistant", "content": pair["chosen"]}]).encode(tok)
        assert ids.tolist() == train_ids.tolist()
        n = len(prompt_ids(tok, pair["prompt"]))
        assert mask[n:].tolist() == train_mask[n:].tolist() == [1] * (len(ids) - n) and not mask[:n].any()
        # generate / serve / the demo prompt with exactly the ids before the answer.
        if len(pair["prompt"]) == 1:
            assert ids[:n].tolist() == prompt_ids(tok, "Another one?", "chat")
        assert ids[:n].tolist() == chat_ids(tok, pair["prompt"], "chat")
        turns = len(pair["prompt"])
        assert ids[:n].tolist().count(tok.eos_id) == turns, "one end-of-text id closes each turn"
        assert "endoftext" not in tok.decode(ids.tolist())

    # The arrays align trains on hold the same ids (slot 0 chosen).
    inputs, kept = encode_pairs(tok, pairs[:1], 256)
    ids, _ = encode_example(tok, pairs[0]["prompt"], pairs[0]["chosen"])
    assert list(kept) == [0] and inputs["token_ids"][0, 0, :len(ids) - 1].tolist() == ids[:-1].tolist()
    # What rendering the template as text did before: "<|endoftext|>" cut into pieces, no end-of-text id.
    as_text = tok.encode(render_prompt("Another one?", "chat"))
    assert tok.eos_id not in as_text and len(as_text) > len(prompt_ids(tok, "Another one?", "chat"))


def test_align_template_chat_makes_raw_prompts_one_user_turn(tmp_path, pydoc_tokenizer):
    from kgpt2.data.preference_pairs import read_preferences

    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "Name a loop.", "chosen": "for", "rejected": "no"}) + "\n"
                    + json.dumps({"prompt": "Name a loop.", "completion": "while", "label": True}) + "\n")
    pairs, singles = read_preferences(path, template="chat")
    assert pairs[0]["prompt"] == singles[0]["prompt"] == [{"role": "user", "content": "Name a loop."}]
    assert read_preferences(path, template="plain")[0][0]["prompt"] == "Name a loop."


@pytest.mark.parametrize("record,message", [
    ({"messages": CONVERSATION[:3], "chosen": "a", "rejected": "b"}, "end with an assistant turn"),
    ({"messages": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}, "needs a role"),
    ({"messages": [], "chosen": "a", "rejected": "b"}, "non-empty list"),
    ({"prompt": CONVERSATION, "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "one assistant message"),
])
def test_bad_chat_preferences_are_one_clear_error(tmp_path, record, message):
    from kgpt2.data.preference_pairs import read_preferences

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(UserError, match=message):
        read_preferences(path)


def test_preference_records_with_chat_prompts_prepare_as_chat(tmp_path, pydoc_tokenizer):
    """SFT on the chosen answers (format `preferences`) trains a chat prompt exactly as `messages` data."""
    from kgpt2.data.shards import ShardSet, prepare

    src = tmp_path / "prefs.jsonl"
    src.write_text(json.dumps({"messages": CONVERSATION, "chosen": "while", "rejected": "No."}) + "\n")
    prepare(str(src), tmp_path / "shards", pydoc_tokenizer, splits="train", progress=False)
    split = ShardSet(tmp_path / "shards").split("train")
    from kgpt2.data.instructions import ChatDocument

    want, mask = ChatDocument("x", "", messages=CONVERSATION + [{"role": "assistant", "content": "while"}]).encode(
        pydoc_tokenizer)
    assert split.article_tokens(0).tolist() == want.tolist()
    assert int(np.asarray(split.mask).sum()) == int(mask.sum())
