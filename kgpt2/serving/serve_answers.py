"""One request of `kgpt2 serve` run on the engine: its prompts' choices submitted, then answered whole (a JSON
body once every choice is done) or streamed as server-sent events while they decode.

A client that leaves frees its slots: a non-streamed answer asks every `DISCONNECT_CHECK_S` whether its client
is still there, a stream's generator is closed when its client goes. The choice objects and the envelope around
them come from kgpt2.serving.serve_responses; the checks and the submission from `kgpt2.serve.Service`.
"""

from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from kgpt2.generation.logprobs import text_tokens
from kgpt2.serving.serve_responses import sse_event
from kgpt2.serving.serve_schema import OpenAIError, SampledRequest

DISCONNECT_CHECK_S = 0.2  # how often a non-streamed answer asks whether its client is still there


async def answer(service, http: Request, body: SampledRequest, prompts: list[list[int]], max_tokens, envelope,
                 choice):
    """Run one request: `body.n` choices for each prompt, choice `i * n + j` for prompt i's j-th.

    `choice(index, text, finish_reason, first, request)` makes one choice object and `envelope(choices,
    usage)` the response (or one streamed chunk) around them.
    """
    loop = asyncio.get_running_loop()
    woken = asyncio.Queue()
    service.check_room(body, len(prompts))
    prepared = [service.prepare(body, ids, max_tokens) for ids in prompts]  # every check before any work

    def wake():  # called on the engine's thread
        loop.call_soon_threadsafe(woken.put_nowait, None)
    requests = [service.submit(body, p, wake, choice=j) for p in prepared for j in range(body.n)]
    prompt_tokens = sum(len(ids) for ids, _, _ in prepared)  # each prompt once, as OpenAI counts them

    def usage():
        n = sum(text_tokens(service.engine.tokenizer, r) for r in requests)  # not the ones a stop string cut
        return {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
    http.state.usage = usage  # for the request's log line (kgpt2.serving.serve_log), counted once after the answer

    if not body.stream:
        try:
            checked = loop.time()
            while not all(r.finished for r in requests):
                try:
                    await asyncio.wait_for(woken.get(), timeout=DISCONNECT_CHECK_S)
                except asyncio.TimeoutError:
                    pass
                # Checked while tokens flow too, not only when they stop: a client that left frees its slots now.
                if loop.time() - checked >= DISCONNECT_CHECK_S:
                    checked = loop.time()
                    if await http.is_disconnected():
                        return JSONResponse({})
        finally:
            for r in requests:
                r.cancel()  # a no-op once finished; frees the slots of a client that left
        for r in requests:
            if r.finish_reason not in ("stop", "length"):
                raise failed(r)
        return JSONResponse(envelope([choice(i, r.text, r.finish_reason, None, r) for i, r in enumerate(requests)],
                                     usage()))

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(events(requests, woken, envelope, choice, usage, include_usage),
                             media_type="text/event-stream")


def failed(request) -> OpenAIError:
    return OpenAIError(500 if request.finish_reason == "error" else 503,
                       request.error or "the server is shutting down", type="server_error")


async def events(requests, woken: asyncio.Queue, envelope, choice, usage, include_usage: bool = False):
    """Server-sent events of `requests` as they decode: a chunk per choice per piece, then [DONE].

    The last content chunk carries the usage; with `stream_options.include_usage` (OpenAI's form) every
    content chunk has `usage: null` and one more chunk, `choices: []` with the usage, comes before [DONE].
    """
    def chunk(choices, counts):
        return (envelope(choices, None) | {"usage": None}) if include_usage else envelope(choices, counts)

    # The events of one wake-up go out as one write: written one by one, the n choices' chunks reached a client
    # that had just left as n writes in a row, before the event loop could see it gone, and asyncio logged
    # "socket.send() raised exception." on the server's console.
    try:
        yield "".join(sse_event(chunk([choice(i, "", None, True, r)], None)) for i, r in enumerate(requests))
        pending = list(range(len(requests)))
        while pending:
            await woken.get()
            out = []
            for i in list(pending):
                r = requests[i]
                # The engine's thread may finish the request meanwhile: decide on `done` read
                # before the text (its text is final before it is marked finished).
                done = r.finished
                piece = r.take_text()
                if r.finish_reason in ("error", "cancelled") and done:
                    yield "".join(out) + sse_event(failed(r).body)
                    return
                if done:
                    pending.remove(i)
                if piece or done:
                    out.append(sse_event(chunk([choice(i, piece, r.finish_reason if done else None, False, r)],
                                               usage() if done and not pending else None)))
            if out:
                yield "".join(out)
        yield (sse_event(envelope([], usage())) if include_usage else "") + sse_event("[DONE]")
    finally:
        for r in requests:
            r.cancel()  # the client left mid-stream: free the slots
