"""A request still running when `kgpt2 serve`'s graceful shutdown runs out: uvicorn cancels it. The client gets
OpenAI's 503 error (a stream: as its last event) and the log says `cancelled`; nothing prints a traceback.

A real uvicorn server on a loopback port with a grace of 0.3 s (kgpt2 serve's is 10 s) and an application whose
routes never finish, wrapped as `kgpt2.serve.build_app` wraps its own (kgpt2.serving.serve_log.RequestEdge)."""

import asyncio
import json
import logging
import socket
import threading
import time

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from kgpt2.serving.serve_log import RequestEdge

pytestmark = pytest.mark.backend_neutral


def endless_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestEdge)

    @app.get("/wait")
    async def wait():
        await asyncio.sleep(3600)

    @app.get("/stream")
    async def stream():
        async def events():
            yield 'data: {"text": "first"}\n\n'
            await asyncio.sleep(3600)
        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture()
def server():
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(endless_app(), host="127.0.0.1", port=port, log_level="warning",
                            timeout_graceful_shutdown=0.3)
    srv = uvicorn.Server(config)
    srv.install_signal_handlers = lambda: None  # not the main thread
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(100):  # bounded: 10 s
        if srv.started:
            break
        time.sleep(0.1)
    yield srv, f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_cancelled_stream_and_request_end_with_an_error_not_a_traceback(server, caplog):
    srv, url = server
    got = {}

    def read_stream():
        with httpx.stream("GET", url + "/stream", timeout=30) as r:
            got["events"] = [line for line in r.iter_lines() if line]  # raises if the connection is cut mid-chunk

    def read_plain():
        r = httpx.get(url + "/wait", timeout=30)
        got["plain"] = (r.status_code, r.json())

    readers = [threading.Thread(target=f) for f in (read_stream, read_plain)]
    with caplog.at_level(logging.INFO):
        for t in readers:
            t.start()
        time.sleep(0.5)  # both requests are running
        srv.should_exit = True
        for t in readers:
            t.join(20)
        for _ in range(100):  # a line is written after its response's last byte: wait for both (bounded: 10 s)
            if len([r for r in caplog.records if r.name == "kgpt2.serve"]) >= 2:
                break
            time.sleep(0.1)
    assert got["plain"] == (503, {"error": {"message": "the server is shutting down", "type": "server_error",
                                            "param": None, "code": None}})
    assert got["events"][0] == 'data: {"text": "first"}'
    assert json.loads(got["events"][1][len("data: "):])["error"]["message"] == "the server is shutting down"
    assert not [r for r in caplog.records if r.exc_info or "Exception in ASGI application" in r.getMessage()]
    lines = sorted(r.getMessage()[20:] for r in caplog.records if r.name == "kgpt2.serve")
    assert [line.split()[:3] + line.split()[4:] for line in lines] == [
        ["GET", "/stream", "200", "ms", "stream", "cancelled"], ["GET", "/wait", "503", "ms", "cancelled"]]
