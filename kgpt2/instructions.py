"""The Alpaca instruction template and instruction data, shared by training, generation and the demo.

An Alpaca record (instruction, optional input, output) is trained on as
`format_prompt(instruction, input) + output` followed by end-of-text. The
prompt and the response are tokenised separately and concatenated, so the
prompt's tokens are exactly the tokens `kgpt2 generate --template instruction`
feeds the model, and the loss mask (1 = a training target) is 0 on the prompt
and 1 on the response and the end-of-text.

Examples are one per window, padded (`data.windows = "example"`): keras-hub's
GPT2Backbone takes only a padding mask (its functional inputs are token_ids
and padding_mask; the causal mask is built inside each TransformerDecoder), so
examples packed into one window would attend to each other. The padding share
of the compute is logged by `kgpt2 train` and kept in the stage table.

    >>> from kgpt2.instructions import format_prompt
    >>> print(format_prompt("Name a colour.", ""))
    ### Instruction:
    Name a colour.
    <BLANKLINE>
    ### Response:
    <BLANKLINE>
    >>> from kgpt2.tokenizer import Tokenizer
    >>> tok = Tokenizer.from_dir("../shared/data/gpt2-tokenizer")
    >>> ids, mask = encode_example(tok, format_prompt("Name a colour."), "Blue.")
    >>> tok.decode([t for t, m in zip(ids, mask) if m]), int(mask[-1])
    ('Blue.', 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kgpt2.data.sources import Document, Source, json_records, load_hf
from kgpt2.errors import UserError

INSTRUCTION = "### Instruction:\n"
INPUT = "### Input:\n"
RESPONSE = "### Response:\n"


def format_prompt(instruction: str, input_text: str = "") -> str:
    """Everything before the response; the Input block is omitted when empty."""
    text = INSTRUCTION + instruction.strip() + "\n\n"
    if input_text and input_text.strip():
        text += INPUT + input_text.strip() + "\n\n"
    return text + RESPONSE


@dataclass
class InstructionDocument(Document):
    """A Document whose first `prompt_chars` characters are the prompt (no loss)."""

    prompt_chars: int = 0


def encode_example(tokenizer, prompt: str, response: str):
    """(token ids, loss mask) of prompt + response + end-of-text.

    The two parts are encoded separately so the prompt's ids never depend on
    the response (BPE could merge across the boundary otherwise).
    """
    prompt_ids = tokenizer.encode(prompt)
    response_ids = tokenizer.encode(response)
    ids = np.asarray(prompt_ids + response_ids + [tokenizer.eos_id], dtype=np.int64)
    mask = np.zeros(len(ids), dtype=np.uint8)
    mask[len(prompt_ids):] = 1
    return ids, mask


def record_prompt(record: dict, where: str, template: str = "plain") -> str:
    """The prompt text of an instruction/input record or a raw-`prompt` record."""
    if "instruction" in record:
        return format_prompt(str(record["instruction"]), str(record.get("input") or ""))
    if "prompt" in record:
        prompt = str(record.get("model_input") or record["prompt"])  # demo votes keep what the model saw
        return format_prompt(prompt) if template == "instruction" and "model_input" not in record else prompt
    raise UserError(f"{where}: expected an instruction (or prompt) field, found {', '.join(sorted(record)) or 'none'}")


# Readers (kgpt2.data.sources calls them for the "alpaca" and "preferences" formats)
def _records(src: Source):
    """(where, record) of a JSON/JSON Lines file, or of every split of an `hf:` dataset."""
    if not str(src.path).startswith("hf:"):
        yield from json_records(src)
        return
    for split_name, rows in load_hf(str(src.path)).items():
        for i, row in enumerate(rows):
            yield f"{src.path} [{split_name} row {i}]", dict(row, id=row.get("id", f"{split_name}:{i}"))


def _read(src: Source, response_key: str):
    stem = Path(str(src.path)).stem
    for n, (where, record) in enumerate(_records(src)):
        if response_key not in record:
            raise UserError(f"{where}: expected a {response_key} field, found {', '.join(sorted(record)) or 'none'}")
        if record[response_key] is None:  # a tied demo vote
            src.stats.skip(f"no {response_key}", where)
            continue
        prompt = record_prompt(record, where)
        response = str(record[response_key]).strip()
        if not response:
            src.stats.skip(f"empty {response_key}", where)
            continue
        yield InstructionDocument(str(record.get("id", f"{stem}:{n}")), prompt + response,
                                  prompt_chars=len(prompt))


def read_alpaca(src: Source):
    """Alpaca records: instruction, input, output (a file, or hf:tatsu-lab/alpaca)."""
    yield from _read(src, "output")


def read_preferences(src: Source):
    """Preference records as supervised data on their chosen responses (SFT before DPO)."""
    yield from _read(src, "chosen")

