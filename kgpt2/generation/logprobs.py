"""OpenAI's `logprobs` objects from an engine request's scores (`kgpt2.generation.engine_request.Request`).

Two shapes: the legacy completions one (`tokens`, `token_logprobs`,
`top_logprobs` as `{token text: log-probability}`, `text_offset`), with the
prompt's tokens first when echoed (the first one has no log-probability:
`None`, as OpenAI answers), and the chat one (`{"content": [{"token",
"logprob", "bytes", "top_logprobs"}]}`).

The log-probabilities are the model's own (float32 log-softmax of its logits,
before temperature / top-k / top-p). A completion's list ends with the
end-of-text token when that is what stopped it (OpenAI and vLLM do the same;
lm-evaluation-harness drops the last entry of an echoed `max_tokens: 1`
answer, expecting the generated token there). Tokens cut off by a stop
string are left out. `text_offset` counts characters in the choice's `text`
(the echoed prompt starts at 0).

    >>> from kgpt2.model.char_tokenizer import CharTokenizer
    >>> tok = CharTokenizer("ab")
    >>> top_dict(tok, [(0, -0.1), (1, -2.5)], (1, -2.5))
    {'a': -0.1, 'b': -2.5}
"""

from __future__ import annotations

EOS_TEXT = "<|endoftext|>"


def token_text(tokenizer, token: int) -> str:
    """A token's own text ("<|endoftext|>" for end-of-text, which `decode` drops)."""
    return EOS_TEXT if token == tokenizer.eos_id else tokenizer.decode([token])


def top_dict(tokenizer, top: list, chosen: tuple) -> dict:
    """`{text: log-probability}` of the top tokens and the chosen one (OpenAI always adds it:
    up to `logprobs + 1` entries). Tokens of the same text keep the likelier value."""
    out = {}
    for token, logprob in [*top, chosen]:
        out.setdefault(token_text(tokenizer, token), logprob)
    return out


def offsets(tokenizer, ids: list[int]) -> list[int]:
    """Character offset of each token in `decode(ids)`.

    A token holding part of a UTF-8 character decodes alone to U+FFFD; the
    lengths of the decoded prefixes stay right in that case too.
    """
    pieces = [token_text(tokenizer, t) if t != tokenizer.eos_id else "" for t in ids]
    if "\ufffd" not in "".join(pieces):  # the common case: pieces add up, no prefix decodes
        starts, at = [], 0
        for piece in pieces:
            starts.append(at)
            at += len(piece)
        return starts
    return [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]


def text_tokens(tokenizer, request) -> int:
    """How many of `request.tokens` made its text: a stop string cuts the text, and the tokens decoded past the
    cut (a launch decodes several) are left out of the logprobs and of `usage.completion_tokens`."""
    if len(tokenizer.decode(request.tokens)) == len(request.text):  # no stop string cut the text
        return len(request.tokens)
    return sum(start < len(request.text) for start in offsets(tokenizer, list(request.tokens)))


def _generated(tokenizer, request) -> list[tuple[int, tuple]]:
    """(token, score) of the generated tokens that made the text (and the end-of-text that stopped it)."""
    kept = text_tokens(tokenizer, request)
    tokens = request.tokens[:kept] + ([tokenizer.eos_id] if request.ended_on_eos and kept == len(request.tokens) else [])
    return list(zip(tokens, request.scores))


def completion_logprobs(tokenizer, request) -> dict:
    """The `logprobs` object of one /v1/completions choice (prompt first when `request.echo`)."""
    generated = _generated(tokenizer, request)
    tokens = [t for t, _ in generated]
    logprobs = [score[0] for _, score in generated]
    tops = [top_dict(tokenizer, score[1], (t, score[0])) for t, score in generated]
    prefix = ""
    if request.echo:
        prompt = list(request.ids)
        prefix = tokenizer.decode(prompt)
        pairs = list(zip(prompt[1:], request.prompt_scores))
        tokens = prompt + tokens
        logprobs = [None] + [score[0] for _, score in pairs] + logprobs
        tops = [None] + [top_dict(tokenizer, score[1], (t, score[0])) for t, score in pairs] + tops
    starts = offsets(tokenizer, tokens)
    if request.echo:  # the generated tokens' offsets follow the prompt's text
        starts[len(request.ids):] = [len(prefix) + s for s in offsets(tokenizer, tokens[len(request.ids):])]
    return {"tokens": [token_text(tokenizer, t) for t in tokens], "token_logprobs": logprobs,
            "top_logprobs": tops, "text_offset": starts}


def _chat_entry(tokenizer, token: int, logprob: float) -> dict:
    text = token_text(tokenizer, token)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokenizer, request) -> dict:
    """The `logprobs` object of one /v1/chat/completions choice (the end-of-turn token left out)."""
    content = []
    for token, (logprob, top) in _generated(tokenizer, request):
        if token == tokenizer.eos_id:
            break
        content.append(_chat_entry(tokenizer, token, logprob) |
                       {"top_logprobs": [_chat_entry(tokenizer, t, lp) for t, lp in top]})
    return {"content": content, "refusal": None}
