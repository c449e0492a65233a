"""`kgpt2 serve`'s request log, read where a user sees it: one line per finished request on the server's stderr
(time, method, path, status, latency, tokens; `stream`, `disconnected`), none with `--quiet`."""

import re
import time

import httpx
import openai
import pytest

pytestmark = [pytest.mark.backend_neutral, pytest.mark.slow]  # each server loads and compiles the tiny model

LINE = re.compile(r"^kgpt2: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (GET|POST) (\S+) (\d{3}) (\d+) ms(.*)$")


def request_lines(proc, count: int) -> list[re.Match]:
    """The request lines on the server's stderr once there are `count` (written just after each response),
    less those of the GET /health that `start_server` waited on."""
    for _ in range(100):  # bounded: 10 s
        lines = [m for m in map(LINE.match, proc.stderr_path.read_text().splitlines()) if m and m[3] != "/health"]
        if len(lines) >= count:
            return lines
        time.sleep(0.1)
    pytest.fail(f"{count} request lines expected on stderr, got: {proc.stderr_path.read_text()[-3000:]}")


def timed(call):
    """(result, client-side milliseconds): the server's latency cannot exceed what the client waited."""
    start = time.perf_counter()
    out = call()
    return out, (time.perf_counter() - start) * 1000


def test_a_line_per_request_with_status_tokens_and_latency(start_server):
    proc, url = start_server("--api-key", "secret")
    client = openai.OpenAI(base_url=url + "/v1", api_key="secret", max_retries=0, timeout=120)
    began = time.time()
    _, waited_models = timed(client.models.list)
    assert httpx.get(url + "/v1/models").status_code == 401
    out, waited = timed(lambda: client.completions.create(model="tiny", prompt="The assert statement", max_tokens=5,
                                                          temperature=0))
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, extra_body={"temperature": 7})
    chunks, waited_stream = timed(lambda: list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "What is assert?"}], max_tokens=6, temperature=0,
        stream=True)))
    ended = time.time()
    lines = request_lines(proc, 5)
    health = [m for m in map(LINE.match, proc.stderr_path.read_text().splitlines()) if m and m[3] == "/health"]
    assert [(m[2], m[4], m[6]) for m in health] == [("GET", "200", "")]  # start_server's wait, logged too
    assert [(m[2], m[3], m[4]) for m in lines] == [("GET", "/v1/models", "200"), ("GET", "/v1/models", "401"),
                                                   ("POST", "/v1/completions", "200"),
                                                   ("POST", "/v1/completions", "400"),
                                                   ("POST", "/v1/chat/completions", "200")]
    for m in lines:  # the time each arrived, in this test's window (local time, whole seconds)
        assert time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(began))) <= m[1]
        assert m[1] <= time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ended))
    assert [m[6] for m in lines[:2]] == ["", ""] and lines[3][6] == ""  # no tokens where none were generated
    assert lines[2][6] == f" prompt_tokens={out.usage.prompt_tokens} completion_tokens={out.usage.completion_tokens}"
    usage = chunks[-1].usage  # the last chunk carries the answer's usage
    assert lines[4][6] == f" prompt_tokens={usage.prompt_tokens} completion_tokens={usage.completion_tokens} stream"
    for m, client_ms in [(lines[0], waited_models), (lines[2], waited), (lines[4], waited_stream)]:
        assert int(m[5]) <= client_ms + 1


def test_a_client_leaving_mid_stream_is_logged_so(start_server):
    proc, url = start_server("--slots", "1")
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    asked = dict(model="tiny", prompt="The with statement", max_tokens=50, temperature=0)
    whole = client.completions.create(**asked)
    assert whole.usage.completion_tokens > 30  # greedy: each choice below runs as long
    # 16 choices through one slot, one after another: hundreds of decode steps (a second or so on a CPU), so
    # the client is gone long before the end. The first chunk comes before any token is decoded.
    stream = client.completions.create(**asked, n=16, stream=True)
    next(iter(stream))
    stream.close()
    line = request_lines(proc, 2)[1]
    assert (line[2], line[3], line[4]) == ("POST", "/v1/completions", "200")
    assert re.fullmatch(r" prompt_tokens=\d+ completion_tokens=\d+ stream disconnected", line[6])


def test_quiet_writes_no_request_lines(start_server):
    proc, url = start_server("--quiet")
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    client.completions.create(model="tiny", prompt="x", max_tokens=2, temperature=0)
    assert httpx.get(url + "/v1/models").status_code == 200
    time.sleep(1)  # a line would be written just after its response
    assert not [line for line in proc.stderr_path.read_text().splitlines() if LINE.match(line)]
