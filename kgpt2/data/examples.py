"""Instruction examples as token ids and a loss mask (1 = a training target).

Prompt and response are encoded apart and concatenated, then end-of-text:
the prompt's ids never depend on the response, and the mask is 0 on the
prompt and 1 on the response and the end-of-text, so the loss is on the
response only. `prepare` writes these for instruction sources; `kgpt2 align`
scores its pairs and KTO examples with them. A prompt may be a list of chat
messages: its ids are then `kgpt2.generation.templates.prompt_ids`' (end-of-text ids at
the turn separators), the ids `kgpt2 generate` and `kgpt2 train` use.

    >>> from kgpt2.model.char_tokenizer import CharTokenizer
    >>> from kgpt2.data.examples import encode_example
    >>> from kgpt2.generation.templates import format_prompt
    >>> tok = CharTokenizer.train([format_prompt("Name a colour.") + "Blue."])
    >>> ids, mask = encode_example(tok, format_prompt("Name a colour."), "Blue.")
    >>> tok.decode([t for t, m in zip(ids, mask) if m]), int(mask[-1])
    ('Blue.', 1)
"""

from __future__ import annotations

import numpy as np

from kgpt2.generation.templates import prompt_ids as template_prompt_ids
from kgpt2.model.tokenizer_protocol import Tokenizer


def encode_example(tokenizer: Tokenizer, prompt: str | list, response: str):
    """(token ids, loss mask) of prompt + response + end-of-text.

    The two parts are encoded separately so the prompt's ids never depend on
    the response (BPE could merge across the boundary otherwise). A text
    prompt is encoded as it is; a list of messages in the chat template.
    """
    prompt_ids = template_prompt_ids(tokenizer, prompt)
    response_ids = tokenizer.encode(response)
    ids = np.asarray(prompt_ids + response_ids + [tokenizer.eos_id], dtype=np.int64)
    mask = np.zeros(len(ids), dtype=np.uint8)
    mask[len(prompt_ids):] = 1
    return ids, mask
