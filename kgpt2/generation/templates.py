"""Prompt templates: the text a model is shown before it answers.

`plain` shows the prompt as typed; `instruction` wraps it in the Alpaca
template that instruction tuning trains on (kgpt2.data.instructions), so
`kgpt2 generate --template instruction`, the demo and DPO prompt a tuned
model exactly as it was trained. `chat` is ChatML-style for `messages` data
(system / user / assistant turns): each turn is a `<|role|>` header line and
its content, closed by GPT-2's end-of-text token, which doubles as the turn
separator (GPT-2 has no `<|im_start|>`/`<|im_end|>`, and end-of-text already
means "stop" to the samplers). Turns are tokenised apart, so the end-of-text
is always the token itself, never the text "<|endoftext|>" (which BPE would
cut into pieces such as `<`, `|`, `end`, `of`, `text`, `|`, `>`).

One rendering path: `prompt_ids` gives the ids every consumer prompts with
(`kgpt2 generate`, the demo, `kgpt2 serve`'s chat completions, `kgpt2 align`'s
preference prompts, via kgpt2.data.examples), and a chat prompt's ids are
exactly the start of the ids `kgpt2 train` trains the whole conversation on.
A prompt is text, or (chat) a list of messages: the conversation so far.

    >>> from kgpt2.generation.templates import format_prompt, render_prompt
    >>> print(format_prompt("Name a colour.", ""))
    ### Instruction:
    Name a colour.
    <BLANKLINE>
    ### Response:
    <BLANKLINE>
    >>> render_prompt("Add.", "instruction", "1+1") == format_prompt("Add.", "1+1")
    True
    >>> turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    >>> [(text and text.split(), trained) for text, trained in chat_segments(turns)]
    [(['<|user|>', 'Hi'], False), (None, False), (['<|assistant|>'], False), (['Hello!'], True), (None, True)]
"""

from __future__ import annotations

from kgpt2.errors import UserError

TEMPLATES = ("plain", "instruction", "chat")
ROLES = ("system", "user", "assistant")
INSTRUCTION = "### Instruction:\n"
INPUT = "### Input:\n"
RESPONSE = "### Response:\n"


def format_prompt(instruction: str, input_text: str = "") -> str:
    """The Alpaca prompt: everything before the response; the Input block is omitted when empty."""
    text = INSTRUCTION + instruction.strip() + "\n\n"
    if input_text and input_text.strip():
        text += INPUT + input_text.strip() + "\n\n"
    return text + RESPONSE


def render_prompt(prompt: str, template: str = "plain", input_text: str = "") -> str:
    """Apply a prompt template; `instruction` is the Alpaca template training uses."""
    if template == "plain":
        return prompt
    if template == "instruction":
        return format_prompt(prompt, input_text)
    if template == "chat":  # as text (the end-of-text shown); `prompt_ids` gives the real token
        return "".join("<|endoftext|>" if t is None else t for t, _ in chat_segments([{"role": "user", "content": prompt}]))
    raise UserError(f"unknown prompt template '{template}' (one of: {', '.join(TEMPLATES)})")


def chat_header(role: str) -> str:
    return f"<|{role}|>\n"


def chat_segments(messages: list[dict], add_generation_prompt: bool = True, where: str = "messages"):
    """(text, trained) segments of a conversation; text None = the end-of-text token.

    Assistant contents and their end-of-text are `trained` (the loss is on
    assistant turns only). `add_generation_prompt` ends with an open
    assistant header when the last turn is not the assistant's (for generation).
    """
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise UserError(f"{where}: message {i + 1} needs a role ({', '.join(ROLES)}) and a text content")
        trained = m["role"] == "assistant"
        out += [(("\n" if i else "") + chat_header(m["role"]), False), (m["content"].strip(), trained), (None, trained)]
    if add_generation_prompt and (not messages or messages[-1]["role"] != "assistant"):
        out.append(("\n" + chat_header("assistant"), False))
    # Join each header with the untrained text after it, so BPE sees them as typed.
    merged: list = []
    for text, trained in out:
        if merged and text is not None and merged[-1][0] is not None and merged[-1][1] == trained:
            merged[-1] = (merged[-1][0] + text, trained)
        else:
            merged.append((text, trained))
    return merged


def encode_segments(tokenizer, segments) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of `chat_segments`: each text encoded apart, None as the end-of-text id."""
    ids, mask = [], []
    for text, trained in segments:
        piece = [tokenizer.eos_id] if text is None else tokenizer.encode(text)
        ids += piece
        mask += [int(trained)] * len(piece)
    return ids, mask


def chat_prompt_ids(tokenizer, messages: list[dict], where: str = "messages") -> list[int]:
    """The ids a chat model answers: the conversation so far, then an open assistant header."""
    return encode_segments(tokenizer, chat_segments(messages, where=where))[0]


def prompt_ids(tokenizer, prompt, template: str = "plain", input_text: str = "") -> list[int]:
    """The ids a model is prompted with: a rendered prompt, or a chat with its end-of-text ids.

    `prompt` is text (rendered with `template`; `chat` makes it one user turn)
    or a list of chat messages (always the chat template).
    """
    if isinstance(prompt, list):
        return chat_prompt_ids(tokenizer, prompt)
    if template == "chat":
        return chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}])
    return tokenizer.encode(render_prompt(prompt, template, input_text))
