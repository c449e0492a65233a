"""One log line per finished `kgpt2 serve` request: time, method, path, status, tokens, latency.

    2025-06-01 12:00:00 POST /v1/chat/completions 200 812 ms prompt_tokens=24 completion_tokens=40 stream
    2025-06-01 12:00:03 POST /v1/completions 200 95 ms prompt_tokens=5 completion_tokens=3 stream disconnected
    2025-06-01 12:00:04 GET /v1/models 401 1 ms

The time is when the request arrived; the latency runs until its last byte was
sent (a stream: when it ended), until the client left (`disconnected`) or the
server stopped it (`cancelled`: shutting down). Token
counts are the answer's `usage`, on the routes that generate. The line goes to
the `kgpt2.serve` logger at INFO (`kgpt2 serve` prints it on stderr; `--quiet`
writes none).

Why not uvicorn's access log: uvicorn writes its line when a response *starts*
(a stream's first chunk), so it has no latency of a streamed answer, cannot
know the token counts, and cannot say that a client left mid-answer. This ASGI
middleware (`RequestEdge`) writes its line after the response, with the counts the route left
in the request's `state` (`state.usage`, a function: counted once, at the end).
Its cost is one comparison per ASGI message (a streamed chunk, not a token) and
one clock read and one record per request.

    >>> log_line("POST", "/v1/completions", 200, 0.0123, {"prompt_tokens": 5, "completion_tokens": 3},
    ...          stream=False, disconnected=False, at=0)[20:]
    'POST /v1/completions 200 12 ms prompt_tokens=5 completion_tokens=3'

`RequestEdge` also (always, logging or not) ends a request still running when the
server's graceful shutdown runs out: uvicorn then cancels its task, and a
cancellation that leaves the application makes uvicorn print a traceback and
cut the connection mid-chunk. Caught at the application's edge instead, the
client gets OpenAI's error ("the server is shutting down": a 503, or the
stream's last event) and the log line says `cancelled`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from kgpt2.serving.serve_schema import OpenAIError

log = logging.getLogger("kgpt2.serve")


def log_line(method: str, path: str, status: int | None, seconds: float, usage: dict | None, stream: bool,
             disconnected: bool, at: float, cancelled: bool = False) -> str:
    """The request's line (`at`: when it arrived, seconds since the epoch, shown in local time)."""
    parts = [time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)), method, path,
             str(status) if status is not None else "-", f"{seconds * 1000:.0f} ms"]
    if usage:
        parts += [f"prompt_tokens={usage['prompt_tokens']}", f"completion_tokens={usage['completion_tokens']}"]
    return " ".join(parts + ["stream"] * stream + ["disconnected"] * disconnected + ["cancelled"] * cancelled)


class RequestEdge:
    """ASGI middleware at the application's edge: a request cancelled at shutdown ends with OpenAI's 503 (see the
    module), and with `log_requests` one `log_line` per HTTP request after its response (or the client's leaving).

    One middleware for both: they watch the same messages, and the line must see the 503 it sends."""

    def __init__(self, app, log_requests: bool = True):
        self.app, self.log_requests = app, log_requests

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        at, start = time.time(), time.perf_counter()
        state = scope.setdefault("state", {})  # the route's `http.state` writes here
        seen = {"start": None, "status": None, "sent": False, "left": False, "cancelled": False, "sent_at": None}

        async def watch_receive():
            message = await receive()
            if message["type"] == "http.disconnect" and not seen["sent"]:
                seen["left"] = True  # gone before the last byte (uvicorn also says so after a complete answer)
            return message

        async def watch_send(message):
            if message["type"] == "http.response.start":
                seen["start"], seen["status"] = message, message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # The latency ends as the last byte is handed over (not with the app's work after it): before the
                # send, because the coroutine may resume after the client already has it (a busy CPU: 6 ms
                # logged for a reply the client had in 4.4), and a line must not say more than the client waited.
                seen["sent"], seen["sent_at"] = True, time.perf_counter()
            await send(message)

        try:
            await self.app(scope, watch_receive, watch_send)
        except asyncio.CancelledError:
            # Only uvicorn's shutdown cancels a request's task; the engine's requests were cancelled on the
            # way out (the routes' `finally`), so what is left is telling the client.
            seen["cancelled"] = True
            if not seen["sent"]:
                await _end(watch_send, seen["start"])
        except Exception:
            if seen["status"] is None:
                seen["status"] = 500  # what Starlette's error middleware answers for it
            raise
        finally:
            if self.log_requests:
                usage = state.get("usage")
                stream = seen["start"] is not None and _is_stream(seen["start"])
                log.info(log_line(scope["method"], scope["path"], seen["status"],
                                  (seen["sent_at"] or time.perf_counter()) - start,
                                  usage() if usage else None, stream, seen["left"], at, seen["cancelled"]))


async def _end(send, start) -> None:
    """The rest of a cancelled response: the whole 503 if none was started, a stream's error event, or its end."""
    error = json.dumps(OpenAIError(503, "the server is shutting down", type="server_error").body).encode()
    if start is None:
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(error)).encode())]})
        await send({"type": "http.response.body", "body": error})
        return
    await send({"type": "http.response.body", "body": b"data: " + error + b"\n\n" if _is_stream(start) else b""})


def _is_stream(start: dict) -> bool:
    """Whether an `http.response.start` message begins server-sent events."""
    return any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in start.get("headers", ()))
