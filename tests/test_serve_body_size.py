"""`kgpt2 serve` and very large request bodies: a body with more values than any request within the model's context
is refused by its size before FastAPI parses it (parsing a million token ids held the event loop for half a second),
and a prompt of token ids is validated in one pass."""

import json
import time
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from kgpt2.generate import Settings
from kgpt2.serve import Service, build_app
from kgpt2.serving.serve_schema import CompletionRequest, json_values

pytestmark = pytest.mark.backend_neutral


@pytest.fixture(scope="module")
def service():
    from kgpt2.model.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(["Hello world, hello GPT-2. " * 20], vocab_size=300)
    return Service(SimpleNamespace(tokenizer=tokenizer, cache_length=64, slots=1, busy=0), "tiny", Settings())


def post(http, body: bytes):
    return http.post("/v1/completions", content=body, headers={"content-type": "application/json"})


def test_a_body_of_far_too_many_token_ids_is_refused_by_its_size(service):
    """It was parsed and validated first (~0.5 s on the event loop for a million ids), then refused by length."""
    http = TestClient(build_app(service))
    r = post(http, json.dumps({"model": "tiny", "prompt": [5] * 200_000, "max_tokens": 1}).encode())
    assert r.status_code == 400
    e = r.json()["error"]
    assert e["code"] == "context_length_exceeded" and e["type"] == "invalid_request_error"
    assert e["message"].startswith("the request body holds at least 200,005 values (token ids, strings, numbers)")
    assert "the model's context of 64 tokens" in e["message"]
    # The same, in a field the schema ignores: json.loads would parse it all the same.
    r = post(http, json.dumps({"model": "tiny", "prompt": "x", "junk": [[]] * 200_000}).encode())
    assert r.status_code == 400 and "values" in r.json()["error"]["message"]


def test_the_largest_request_the_server_takes_passes_the_size_check(service):
    """As many prompts as the slots and queue hold, each filling the context: parsed and answered as before (here
    the model is checked next: a 404)."""
    http = TestClient(build_app(service))
    prompts = service.engine.slots + service.max_queue
    r = post(http, json.dumps({"model": "other", "prompt": [[5] * 64] * prompts, "max_tokens": 1}).encode())
    assert r.status_code == 404, r.text
    assert json_values(json.dumps({"prompt": [[5] * 64] * prompts}).encode(), 0) <= service.most_values


def test_values_are_counted_outside_strings():
    """Commas in text cost nothing to parse and count nothing; escaped quotes and backslashes do not end a string."""
    text = json.dumps({"prompt": ['a\\",' * 1000, 'b,\\' * 1000, ",,,"]}).encode()
    assert json_values(text, 10) == 4 + 2  # 4 strings (the key too), 2 commas between them
    assert json_values(json.dumps({"prompt": [5] * 100}).encode(), 10) == 100  # 99 commas and the key
    assert json_values(b'{"a": 1, "b": 2}', 10) == 1  # within `most`: the commas alone, at once


def test_token_ids_are_validated_in_one_pass():
    """pydantic tried `list[str]` on each id of a prompt of token ids first (an error per id): 73,728 ids (72 prompts
    of a 1,024-token context) took 4 to 10 times json.loads' time on the event loop; now a tenth of it."""
    body = json.dumps({"model": "m", "prompt": [50256] * 73_728}).encode()

    def best(f) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
        return min(times)
    parsed = json.loads(body)
    assert best(lambda: CompletionRequest.model_validate(parsed)) < best(lambda: json.loads(body))
    assert CompletionRequest.model_validate(parsed).prompt == parsed["prompt"]


def test_a_body_of_more_bytes_than_any_request_needs_is_refused_unread(service):
    """A body was read whole into memory, however long (only its values were counted): a text of more bytes than
    any request to the server could need is now refused (400) once that many have come; a text within the
    bound reaches the character check, as before."""
    http = TestClient(build_app(service))
    head = b'{"model": "tiny", "max_tokens": 1, "prompt": "'
    over = service.most_bytes + 1 - len(head) - 2
    r = post(http, head + b"a" * over + b'"}')
    assert r.status_code == 400, r.text
    e = r.json()["error"]
    assert e["message"].startswith(f"the request body is over {service.most_bytes:,} bytes")
    assert e["code"] == "context_length_exceeded"
    r = post(http, head + b"a" * (over - 1) + b'"}')  # one byte less: read, parsed, refused by its characters
    assert r.status_code == 400 and "characters" in r.json()["error"]["message"], r.text
