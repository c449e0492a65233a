"""`kgpt2 serve` under load, as other clients see it: a long prompt being tokenized stalls no one, and a client that
leaves a non-streamed request frees its slots at once. A real uvicorn server on a loopback port, in a thread, so
the test can hold the tokenizer or slow the engine down."""

import json
import socket
import threading
import time
from types import SimpleNamespace

import httpx
import pytest

from kgpt2.generate import Settings
from kgpt2.serve import Service, build_app

pytestmark = pytest.mark.backend_neutral


@pytest.fixture()
def serve_app():
    """`serve_app(service)`: its application on a free loopback port; returns the base URL. Stopped at the end."""
    import uvicorn

    servers = []

    def start(service):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        srv = uvicorn.Server(uvicorn.Config(build_app(service), host="127.0.0.1", port=port, log_level="warning"))
        srv.install_signal_handlers = lambda: None  # not the main thread
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        servers.append((srv, thread))
        for _ in range(100):  # bounded: 10 s
            if srv.started:
                return f"http://127.0.0.1:{port}"
            time.sleep(0.1)
        pytest.fail("the server did not start within 10 s")

    yield start
    for srv, thread in servers:
        srv.should_exit = True
        thread.join(10)


class HeldTokenizer:
    """A tokenizer whose `encode` waits until the test releases it: a long text being tokenized, made exact."""

    def __init__(self, tokenizer):
        self.tokenizer, self.started, self.release = tokenizer, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def encode(self, text):
        self.started.set()
        self.release.wait(30)
        return self.tokenizer.encode(text)


def test_health_answers_while_a_prompt_is_tokenized(serve_app):
    """Prompts were tokenized on the event loop: a 10 MB one held /health (and every client) for 6.6 s."""
    from kgpt2.model.tokenizer import Tokenizer

    held = HeldTokenizer(Tokenizer.train(["Hello world, hello GPT-2. " * 20], vocab_size=300))
    url = serve_app(Service(SimpleNamespace(tokenizer=held, cache_length=64, slots=1, busy=0), "tiny", Settings()))
    got = {}
    post = threading.Thread(target=lambda: got.update(answer=httpx.post(
        url + "/v1/completions", json={"model": "other", "prompt": "Hello"}, timeout=30)))
    post.start()
    try:
        assert held.started.wait(10)
        health = httpx.get(url + "/health", timeout=3)  # a timeout here: the loop is blocked
    finally:
        held.release.set()
        post.join(30)
    assert health.status_code == 200 and health.json()["busy"] == 0
    assert got["answer"].status_code == 404  # tokenized, then the model id was checked


@pytest.mark.slow  # loads the tiny run's model
def test_a_client_that_leaves_a_plain_request_frees_its_slot_at_once(serve_app, loaded):
    """While tokens flowed, a non-streamed answer never checked its client (only after 1 s without a token): a
    client that left kept its slot until the whole answer was generated."""
    from kgpt2.generation.engine import Engine

    model, tokenizer, cfg = loaded
    engine = Engine(model, tokenizer, slots=2, steps_per_launch=1).start()
    submitted, submit = [], engine.submit
    engine.submit = lambda *a, **k: submitted.append(submit(*a, **k)) or submitted[-1]
    try:
        url = serve_app(Service(engine, "tiny", Settings.from_config(cfg.generate)))
        body = {"model": "tiny", "prompt": "The assert statement", "max_tokens": 40, "temperature": 0}
        whole = httpx.post(url + "/v1/completions", json=body, timeout=120).json()
        assert whole["choices"][0]["finish_reason"] == "length"  # greedy: it runs all 40 tokens unless stopped
        step = engine.step
        engine.step = lambda steps=None: time.sleep(0.1) or step(steps)  # 40 tokens: 4 s
        data = json.dumps(body).encode()
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as client:
            client.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                           b"content-length: %d\r\n\r\n%s" % (len(data), data))
            for _ in range(100):  # bounded: 10 s
                if len(submitted) == 2 and submitted[1].tokens:
                    break
                time.sleep(0.05)
            assert submitted[1].tokens and not submitted[1].finished
        left = time.perf_counter()  # the client closed its connection
        while not submitted[1].finished and time.perf_counter() - left < 10:
            time.sleep(0.02)
        assert submitted[1].finish_reason == "cancelled" and time.perf_counter() - left < 1.5
        for _ in range(50):  # the engine frees the row at its next step (bounded: 5 s)
            if engine.busy == 0:
                break
            time.sleep(0.1)
        assert engine.busy == 0
    finally:
        engine.close()


def test_a_character_the_tokenizer_has_no_id_for_is_a_400(serve_app):
    """A character-level run's tokenizer refuses a character it never saw (a UserError): the server answered 500."""
    from kgpt2.model.char_tokenizer import CharTokenizer

    chars = CharTokenizer.train(["hello world"])
    url = serve_app(Service(SimpleNamespace(tokenizer=chars, cache_length=64, slots=1, busy=0), "tiny", Settings()))
    answer = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "hello ✓"}, timeout=30)
    assert answer.status_code == 400, answer.text
    assert "✓" in answer.json()["error"]["message"] and answer.json()["error"]["type"] == "invalid_request_error"


def test_health_answers_while_a_huge_body_is_refused(serve_app):
    """A body of two million token ids was parsed and validated on the event loop (~1 s, several on a busy machine)
    before its length was checked: every other client waited. Refused by its size now, in milliseconds."""
    from kgpt2.model.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(["Hello world, hello GPT-2. " * 20], vocab_size=300)
    url = serve_app(Service(SimpleNamespace(tokenizer=tokenizer, cache_length=1024, slots=8, busy=0), "tiny",
                            Settings()))
    body = json.dumps({"model": "tiny", "prompt": [5] * 2_000_000, "max_tokens": 1}).encode()
    got = {}
    post = threading.Thread(target=lambda: got.update(answer=httpx.post(
        url + "/v1/completions", content=body, headers={"content-type": "application/json"}, timeout=60)))
    worst = 0.0
    with httpx.Client() as client:
        client.get(url + "/health")  # connected before the big one is sent
        post.start()
        while post.is_alive():
            start = time.perf_counter()
            assert client.get(url + "/health", timeout=30).status_code == 200
            worst = max(worst, time.perf_counter() - start)
    post.join()
    assert worst < 1.0, f"/health waited {worst:.2f} s behind the big body"
    error = got["answer"].json()["error"]
    assert got["answer"].status_code == 400 and error["code"] == "context_length_exceeded"
    assert "values" in error["message"]  # refused by its size, not by its length once parsed
