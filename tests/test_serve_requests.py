"""`kgpt2 serve`'s answers to malformed request bodies, as a client sees them: one OpenAI-shaped 400 whose
message a person can act on. No model is loaded: FastAPI validates a body before any route runs."""

import json
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from kgpt2.serve import build_app

pytestmark = pytest.mark.backend_neutral


@pytest.fixture(scope="module")
def http():
    return TestClient(build_app(SimpleNamespace(model_id="tiny")))


def error(http, route, body: bytes) -> dict:
    r = http.post(route, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    return r.json()["error"]


def test_a_body_that_is_not_json_says_so_and_where(http):
    e = error(http, "/v1/completions", b'{"model": "tiny", "prompt": ')
    assert e["message"] == "the request body is not valid JSON (Expecting value at character 28)"
    assert e["param"] is None and e["type"] == "invalid_request_error"


def test_a_body_that_is_not_an_object(http):
    e = error(http, "/v1/completions", b"[1, 2]")
    assert e["message"] == "the request body must be a JSON object" and e["param"] is None


@pytest.mark.parametrize("prompt", ['["a", [1, 2]]', "[1.5, 2]", "[[[1]]]", "{}"])
def test_a_prompt_of_no_accepted_shape_names_the_shapes(http, prompt):
    e = error(http, "/v1/completions", b'{"model": "tiny", "max_tokens": 1, "prompt": %s}' % prompt.encode())
    assert e["param"] == "prompt"
    assert e["message"] == "prompt must be a string, a list of strings, a list of token ids or a list of such lists"


def test_stop_of_no_accepted_shape_and_a_plain_field_error(http):
    e = error(http, "/v1/completions", b'{"model": "tiny", "prompt": "x", "stop": [1]}')
    assert (e["param"], e["message"]) == ("stop", "stop must be a string or a list of up to 4 strings")
    e = error(http, "/v1/completions", b'{"model": "tiny"}')
    assert (e["param"], e["message"]) == ("prompt", "prompt: Field required")
    e = error(http, "/v1/completions", b'{"model": "tiny", "prompt": "x", "logprobs": 6}')
    assert (e["param"], e["message"]) == ("logprobs", "logprobs: Input should be less than or equal to 5")


def chat_error(http, content) -> dict:
    message = {"role": "user"} if content == "left out" else {"role": "user", "content": content}
    return error(http, "/v1/chat/completions", json.dumps({"model": "tiny", "messages": [message]}).encode())


@pytest.mark.parametrize("content", [None, "left out"])
def test_a_user_message_needs_a_content(http, content):
    e = chat_error(http, content)
    assert e["message"] == "messages[0].content is required for a user message (only an assistant message may have none)"
    assert e["param"] == "messages.0.content"


@pytest.mark.parametrize("content, param, message", [
    (5, "messages.0.content",
     'messages.0.content must be a string or a list of content parts ({"type": "text", "text": ...})'),
    ([{"text": "x"}], "messages.0.content.0.type", "messages.0.content.0.type: Field required"),
    (["x"], "messages.0.content.0", 'messages.0.content.0 must be a content part, such as {"type": "text", "text": ...}'),
    ([{"type": "text"}], "messages.0.content.0", "messages[0].content[0]: a 'text' part needs a string 'text'"),
    ([{"type": "refusal", "refusal": "no"}], "messages.0.content.0",
     "messages[0].content[0] is a part of type 'refusal'; this model reads text only (parts of type 'text')"),
    ([{"type": "file", "file": {"file_id": "f"}}], "messages.0.content.0",
     "messages[0].content[0] is a part of type 'file'; this model reads text only (parts of type 'text')"),
])
def test_content_parts_that_are_not_text_parts_are_named(http, content, param, message):
    e = chat_error(http, content)
    assert (e["param"], e["message"]) == (param, message)


@pytest.mark.parametrize("prompt, wanted, message", [
    ([5], 64, "the prompt is 1 token and 64 more were asked for; the model's context is 64 tokens"),
    ([5] * 64, 1, "the prompt is 64 tokens and 1 more was asked for; the model's context is 64 tokens"),
    ([5] * 10, 5_000, "the prompt is 10 tokens and 5,000 more were asked for; the model's context is 64 tokens")])
def test_a_request_past_the_context_counts_in_plain_english(prompt, wanted, message):
    """It said "the prompt is 1 tokens"."""
    from kgpt2.serve import Service
    from kgpt2.serve_schema import CompletionRequest, OpenAIError

    service = Service.__new__(Service)  # only what `prepare` reads: no model is loaded
    service.model_id, service.engine = "tiny", SimpleNamespace(cache_length=64, tokenizer=SimpleNamespace(eos_id=0))
    with pytest.raises(OpenAIError) as refused:
        service.prepare(CompletionRequest(model="tiny", prompt=prompt), prompt, wanted)
    assert refused.value.status == 400 and refused.value.body["error"]["message"] == message
