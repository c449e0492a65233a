"""Instruction examples as token ids and a loss mask (1 = a training target).

Prompt and response are encoded apart and concatenated, then end-of-text:
the prompt's ids never depend on the response, and the mask is 0 on the
prompt and 1 on the response and the end-of-text, so the loss is on the
response only. `prepare` writes these for instruction sources; DPO scores
its pairs with them.

    >>> from kgpt2.char_tokenizer import CharTokenizer
    >>> from kgpt2.data.examples import encode_example
    >>> from kgpt2.templates import format_prompt
    >>> tok = CharTokenizer.train([format_prompt("Name a colour.") + "Blue."])
    >>> ids, mask = encode_example(tok, format_prompt("Name a colour."), "Blue.")
    >>> tok.decode([t for t, m in zip(ids, mask) if m]), int(mask[-1])
    ('Blue.', 1)
"""

from __future__ import annotations

import numpy as np

from kgpt2.tokenizer_protocol import Tokenizer


def encode_example(tokenizer: Tokenizer, prompt: str, response: str):
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
