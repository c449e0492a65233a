"""Instruction, chat and preference data: the `alpaca`, `messages` and `preferences` source formats, and their token masks.

An Alpaca record (instruction, optional input, output) is trained on as
`format_prompt(instruction, input) + output` followed by end-of-text
(`kgpt2.generation.templates`). The readers yield `InstructionDocument`s that remember where
the prompt ends; `kgpt2.data.examples.encode_example` tokenises the prompt
and the response apart, so the prompt's tokens are exactly the tokens
`kgpt2 generate --template instruction` feeds the model, and the loss mask
(1 = a training target) is 0 on the prompt and 1 on the response and the
end-of-text.

Training packs several examples into each window (`data.windows =
"packed_examples"`, what "auto" picks for these shards): kgpt2.data.packing
places them, and kgpt2.model.packed_attention confines each example's attention to
itself with positions restarting, since keras-hub's GPT2Backbone takes only a
padding mask. `data.windows = "example"` puts one example per window, padded.
The padding share is logged by `kgpt2 train` and kept in the stage table.

    >>> from kgpt2.data.instructions import record_prompt
    >>> print(record_prompt({"instruction": "Add.", "input": "1+1"}, "example"))
    ### Instruction:
    Add.
    <BLANKLINE>
    ### Input:
    1+1
    <BLANKLINE>
    ### Response:
    <BLANKLINE>
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kgpt2.data.compression import plain
from kgpt2.data.documents import Document
from kgpt2.data.examples import encode_example
from kgpt2.data.records import is_table_file, json_records, load_hf, table_records
from kgpt2.errors import UserError
from kgpt2.generation.templates import chat_segments, encode_segments, format_prompt


@dataclass
class InstructionDocument(Document):
    """A Document whose first `prompt_chars` characters are the prompt (no loss)."""

    prompt_chars: int = 0

    def encode(self, tokenizer):
        """(ids ending in end-of-text, loss mask): prompt and response encoded apart."""
        return encode_example(tokenizer, self.text[:self.prompt_chars], self.text[self.prompt_chars:])


@dataclass
class ChatDocument(InstructionDocument):
    """A conversation in the `chat` template; the loss is on assistant turns (and their end-of-text)."""

    messages: list = field(default_factory=list)

    def encode(self, tokenizer):
        ids, mask = encode_segments(tokenizer, chat_segments(self.messages, add_generation_prompt=False))
        return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.uint8)


def record_prompt(record: dict, where: str, template: str = "plain") -> str | list:
    """The prompt of a record: text (instruction/input, or a raw `prompt`), or chat messages.

    Chat prompts (a list) are a record's `messages`, a `prompt` that is a
    list of messages (TRL's conversational format), a demo vote cast in the
    chat template, or a raw `prompt` when `template` is "chat": they are the
    conversation so far, tokenised by `kgpt2.generation.templates.prompt_ids`.
    """
    messages = _chat_messages(record, template)
    if messages is not None:
        return _checked_chat(messages, where)
    if "instruction" in record:
        return format_prompt(str(record["instruction"]), str(record.get("input") or ""))
    if "prompt" in record:
        prompt = str(record.get("model_input") or record["prompt"])  # demo votes keep what the model saw
        return format_prompt(prompt) if template == "instruction" and "model_input" not in record else prompt
    raise UserError(f"{where}: expected an instruction (or prompt) field, found {', '.join(sorted(record)) or 'none'}")


def _chat_messages(record: dict, template: str) -> list | None:
    if "messages" in record:
        return record["messages"]
    prompt = record.get("prompt")
    if isinstance(prompt, list):
        return prompt
    if prompt is None or "instruction" in record:
        return None
    if record.get("template") == "chat" or (template == "chat" and "model_input" not in record):
        return [{"role": "user", "content": str(prompt)}]  # a demo vote in the chat template: one user turn
    return None


def _checked_chat(messages, where: str) -> list:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: expected the prompt's messages as a non-empty list of role/content objects")
    chat_segments(messages, where=where)  # one clear error for a bad role or content
    if messages[-1]["role"] == "assistant":
        raise UserError(f"{where}: the prompt's messages end with an assistant turn; "
                        "the answer (chosen, rejected or completion) is the assistant turn that follows them")
    return messages


def record_response(value, where: str, key: str):
    """An answer field as text: a string, or (TRL's conversational format) one assistant message."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) \
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str):
        return value[0]["content"]
    if isinstance(value, (list, dict)):
        raise UserError(f"{where}: {key} must be text or one assistant message")
    return str(value)


def _records(src):
    """(where, record) of a JSON/JSON Lines file, the rows of a CSV/TSV/parquet table, or every split of an `hf:`
    dataset."""
    if is_table_file(src.path):
        yield from table_records(Path(src.path))
        return
    if not str(src.path).startswith("hf:"):
        yield from json_records(src)
        return
    for split_name, rows in load_hf(str(src.path)).items():
        for i, row in enumerate(rows):
            yield f"{src.path} [{split_name} row {i + 1}]", dict(row, id=row.get("id", f"{split_name}:{i}"))


def _read(src, response_key: str):
    stem = plain(str(src.path)).stem
    for n, (where, record) in enumerate(_records(src)):
        if response_key not in record:
            article = "an" if response_key[0] in "aeiou" else "a"
            raise UserError(f"{where}: expected {article} {response_key} field, "
                            f"found {', '.join(sorted(record)) or 'none'}")
        if record[response_key] is None:  # a tied demo vote
            src.stats.skip(f"no {response_key}", where)
            continue
        prompt = record_prompt(record, where)
        response = record_response(record[response_key], where, response_key).strip()
        if not response:
            src.stats.skip(f"empty {response_key}", where)
            continue
        doc_id = str(record.get("id", f"{stem}:{n}"))
        if isinstance(prompt, list):  # a chat prompt: the conversation with this answer, as `messages` trains
            messages = prompt + [{"role": "assistant", "content": response}]
            yield ChatDocument(doc_id, _chat_text(messages), where=where, messages=messages)
        else:
            yield InstructionDocument(doc_id, prompt + response, where=where, prompt_chars=len(prompt))


def read_alpaca(src):
    """Alpaca records: instruction, input, output (a file, or hf:tatsu-lab/alpaca)."""
    yield from _read(src, "output")


def read_preferences(src):
    """Preference records as supervised data on their chosen responses (SFT before DPO; chat prompts as chat)."""
    yield from _read(src, "chosen")


def read_messages(src):
    """Chat records: {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}.

    Rendered with the `chat` template (kgpt2.generation.templates); a conversation with
    no assistant turn has nothing to train on and is skipped and counted.
    """
    stem = plain(str(src.path)).stem
    for n, (where, record) in enumerate(_records(src)):
        messages = record.get("messages")
        if isinstance(messages, str) and plain(str(src.path)).suffix.lower() in (".csv", ".tsv"):  # no list there
            raise UserError(f"{where}: messages is text, not a list of role/content objects; a CSV cell holds only "
                            "text: give chat records as JSON Lines or parquet")
        if not isinstance(messages, list):
            raise UserError(f"{where}: expected a messages list of role/content objects")
        segments = chat_segments(messages, add_generation_prompt=False, where=where)
        if not any(trained for _, trained in segments):
            src.stats.skip("no assistant turn", where)
            continue
        yield ChatDocument(str(record.get("id", f"{stem}:{n}")), _chat_text(messages), where=where, messages=messages)


def _chat_text(messages: list) -> str:
    """A conversation as text (documents keep a text; its ids come from `ChatDocument.encode`)."""
    return "".join("<|endoftext|>" if t is None else t for t, _ in chat_segments(messages, add_generation_prompt=False))
