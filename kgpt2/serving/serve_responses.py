r"""The answers `kgpt2 serve` sends, in OpenAI's shapes: `/v1/completions`' and `/v1/chat/completions`' envelopes
and choices (whole, or as streamed chunks), their ids, and one server-sent event.

    >>> sse_event({"choices": []})
    'data: {"choices": []}\n\n'
    >>> response_id("cmpl")[:5]
    'cmpl-'
"""

from __future__ import annotations

import json
import uuid

from kgpt2.generation.logprobs import chat_logprobs, completion_logprobs
from kgpt2.serving.serve_schema import ChatRequest, CompletionRequest


def response_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:24]}"


def sse_event(data) -> str:
    return f"data: {json.dumps(data) if not isinstance(data, str) else data}\n\n"


def completion_shape(rid: str, created: int, model_id: str, tokenizer, body: CompletionRequest):
    """(envelope, choice) of /v1/completions' answers (see `kgpt2.serving.serve_answers.answer`): the prompt first
    with `echo` (streamed: in the first chunk), `logprobs` (not streamed: refused before)."""
    def choice(index, text, finish, first, request):
        if body.echo and first is not False:
            text = tokenizer.decode(request.ids) + text
        scores = completion_logprobs(tokenizer, request) if body.logprobs is not None and first is None else None
        return {"index": index, "text": text, "logprobs": scores, "finish_reason": finish}

    def envelope(choices, usage):
        out = {"id": rid, "object": "text_completion", "created": created, "model": model_id, "choices": choices}
        return out | ({"usage": usage} if usage else {})
    return envelope, choice


def chat_shape(rid: str, created: int, model_id: str, tokenizer, body: ChatRequest):
    """(envelope, choice) of /v1/chat/completions' answers: messages, or deltas when streamed."""
    stream = body.stream

    def choice(index, text, finish, first, request):
        if stream:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            return {"index": index, "delta": delta, "finish_reason": finish}
        scores = chat_logprobs(tokenizer, request) if body.logprobs else None
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": scores,
                "finish_reason": finish}

    def envelope(choices, usage):
        kind = "chat.completion.chunk" if stream else "chat.completion"
        out = {"id": rid, "object": kind, "created": created, "model": model_id, "choices": choices}
        return out | ({"usage": usage} if usage else {})
    return envelope, choice
