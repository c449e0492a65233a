"""Prompt templates: the text a model is shown before it answers.

`plain` shows the prompt as typed; `instruction` wraps it in the Alpaca
template that instruction tuning trains on (kgpt2.data.instructions), so
`kgpt2 generate --template instruction`, the demo and DPO prompt a tuned
model exactly as it was trained.

    >>> from kgpt2.templates import format_prompt, render_prompt
    >>> print(format_prompt("Name a colour.", ""))
    ### Instruction:
    Name a colour.
    <BLANKLINE>
    ### Response:
    <BLANKLINE>
    >>> render_prompt("Add.", "instruction", "1+1") == format_prompt("Add.", "1+1")
    True
"""

from __future__ import annotations

from kgpt2.errors import UserError

TEMPLATES = ("plain", "instruction")
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
    raise UserError(f"unknown prompt template '{template}' (one of: {', '.join(TEMPLATES)})")
