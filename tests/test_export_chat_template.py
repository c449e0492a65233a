"""An exported run's tokenizer prompts as kgpt2 does: transformers' `apply_chat_template` as the oracle.

A `chat` run's export carries a Jinja chat template whose rendering (text and token ids, through
transformers' own GPT2Tokenizer) is kgpt2.generation.templates' prompt, and, without the generation prompt, the ids
`kgpt2 train` trains a conversation on; an `instruction` run's renders the Alpaca prompt that `kgpt2 serve`
builds from messages; a `plain` run has none. Checked with the real GPT-2 BPE.
"""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.backend_neutral

transformers = pytest.importorskip("transformers")
jinja2 = pytest.importorskip("jinja2")

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "  You are terse.\n"}, {"role": "user", "content": "Name 3 colours:\n- red?"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": " 4. "},
     {"role": "user", "content": "'And' 3+3, in words?  "}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Bonjour"},
     {"role": "assistant", "content": "Salut !"}, {"role": "user", "content": "Ça va ? 😀"}],
]


def hf_tokenizer(tokenizer, tmp_path, template):
    from kgpt2.export import write_hf_tokenizer

    out = tmp_path / template
    out.mkdir()
    return transformers.AutoTokenizer.from_pretrained(write_hf_tokenizer(tokenizer, out, 1024, template))


def template_ids(hf, messages, **options) -> list[int]:
    ids = hf.apply_chat_template(messages, tokenize=True, **options)
    return list(ids if isinstance(ids, list) else ids["input_ids"])


def test_chat_template_renders_kgpt2s_chat_prompt(gpt2_tokenizer, tmp_path):
    from kgpt2.data.instructions import ChatDocument
    from kgpt2.generation.templates import chat_prompt_ids, chat_segments

    hf = hf_tokenizer(gpt2_tokenizer, tmp_path, "chat")
    for messages in CONVERSATIONS:
        text = "".join("<|endoftext|>" if t is None else t for t, _ in chat_segments(messages))
        assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text
        assert template_ids(hf, messages, add_generation_prompt=True) == chat_prompt_ids(gpt2_tokenizer, messages)
        whole = messages + [{"role": "assistant", "content": "Sure: 1, 2."}]
        trained = ChatDocument(id="chat", text="", messages=whole).encode(gpt2_tokenizer)[0].tolist()
        assert template_ids(hf, whole, add_generation_prompt=False) == trained
    developer = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert template_ids(hf, developer, add_generation_prompt=True) == chat_prompt_ids(
        gpt2_tokenizer, [{"role": "system", "content": "Be brief."}, developer[1]])  # as `kgpt2 serve` reads it
    with pytest.raises(jinja2.TemplateError, match="needs a role"):
        hf.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_instruction_template_renders_the_alpaca_prompt(gpt2_tokenizer, tmp_path):
    from kgpt2.generation.templates import format_prompt
    from kgpt2.serve import chat_prompt

    hf = hf_tokenizer(gpt2_tokenizer, tmp_path, "instruction")
    assert hf.apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=True) == format_prompt("Hi")
    for messages in CONVERSATIONS:  # earlier messages are the instruction's input, as `kgpt2 serve` has it
        text = chat_prompt(messages, "instruction")
        assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text
        assert template_ids(hf, messages, add_generation_prompt=True) == gpt2_tokenizer.encode(text)
    with pytest.raises(jinja2.TemplateError, match="last user message"):
        hf.apply_chat_template(CONVERSATIONS[2][:2], tokenize=False)


def test_export_writes_the_runs_chat_template(tiny_run, tmp_path, kgpt2_cli):
    from kgpt2.generation.templates import chat_prompt_ids
    from kgpt2.run import load_model

    plain = kgpt2_cli("export", "--run", tiny_run, "--to", "hf", "plain-hf", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "chat_template" not in json.loads((tmp_path / "plain-hf" / "tokenizer_config.json").read_text())
    chat_run = shutil.copytree(tiny_run, tmp_path / "chat-run")
    config = json.loads((chat_run / "config.json").read_text())
    config["generate"]["template"] = "chat"
    (chat_run / "config.json").write_text(json.dumps(config))
    done = kgpt2_cli("export", "--run", chat_run, "--to", "hf", "chat-hf", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "chat-hf")
    _, tokenizer, _ = load_model(chat_run, "base")
    for messages in CONVERSATIONS:
        assert template_ids(hf, messages, add_generation_prompt=True) == chat_prompt_ids(tokenizer, messages)
