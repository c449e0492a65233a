"""`kgpt2 serve`'s 400 for a chat whose `max_completion_tokens` overflows the context names that field: it named
`max_tokens`, a field the client (the `openai` client sends `max_completion_tokens` for new models) never sent."""

import json
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from kgpt2.generate import Settings
from kgpt2.serve import Service, build_app

pytestmark = pytest.mark.backend_neutral  # request checks before any model work


@pytest.fixture
def http(pydoc_tokenizer):
    engine = SimpleNamespace(tokenizer=pydoc_tokenizer, cache_length=64, slots=1, busy=0)  # no model: refused first
    return TestClient(build_app(Service(engine, "tiny", Settings())))


@pytest.mark.parametrize("fields, param", [
    ({"max_completion_tokens": 1000}, "max_completion_tokens"),
    ({"max_completion_tokens": 1000, "max_tokens": 5}, "max_completion_tokens"),  # the one that counts
    ({"max_tokens": 1000}, "max_tokens")])
def test_the_field_that_overflows_is_named(http, fields, param):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], **fields}
    r = http.post("/v1/chat/completions", content=json.dumps(body).encode(),
                  headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == (param, "context_length_exceeded")
    assert "1,000 more were asked for; the model's context is 64 tokens" in error["message"]
