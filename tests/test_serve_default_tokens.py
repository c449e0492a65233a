"""`kgpt2 serve`'s 400 when a completion leaves max_tokens out and the prompt plus the default 16 overflow the
context: it said "16 more were asked for", though the client asked for none."""

import json
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from kgpt2.generate import Settings
from kgpt2.serve import Service, build_app

pytestmark = pytest.mark.backend_neutral  # request checks before any model work


@pytest.fixture(scope="module")
def http():
    from kgpt2.model.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(["Hello world, hello GPT-2. " * 20], vocab_size=300)
    service = Service(SimpleNamespace(tokenizer=tokenizer, cache_length=64, slots=1, busy=0), "tiny", Settings())
    return TestClient(build_app(service))


def refusal(http, **fields) -> dict:
    r = http.post("/v1/completions", content=json.dumps({"model": "tiny", **fields}).encode(),
                  headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    return r.json()["error"]


@pytest.mark.parametrize("length, fix", [
    (60, "set max_tokens to at most 4 or shorten the prompt to at most 48 tokens"),
    (64, "shorten the prompt to at most 48 tokens")])
def test_the_default_max_tokens_is_named_as_the_default(http, length, fix):
    e = refusal(http, prompt=[5] * length)
    assert e["message"] == (f"the prompt is {length} tokens and max_tokens was not set; its default of 16 more "
                            f"tokens does not fit the model's context of 64 tokens: {fix}")
    assert (e["param"], e["code"]) == ("max_tokens", "context_length_exceeded")


def test_a_max_tokens_that_was_sent_is_counted_as_asked(http):
    e = refusal(http, prompt=[5] * 60, max_tokens=16)
    assert e["message"] == "the prompt is 60 tokens and 16 more were asked for; the model's context is 64 tokens"
