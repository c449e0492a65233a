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
    from kgpt2.serving.serve_schema import CompletionRequest, OpenAIError

    service = Service.__new__(Service)  # only what `prepare` reads: no model is loaded
    service.model_id, service.engine = "tiny", SimpleNamespace(cache_length=64, tokenizer=SimpleNamespace(eos_id=0))
    with pytest.raises(OpenAIError) as refused:
        service.prepare(CompletionRequest(model="tiny", prompt=prompt), prompt, wanted)
    assert refused.value.status == 400 and refused.value.body["error"]["message"] == message


@pytest.mark.parametrize("prompt, wanted, chat, param, message", [
    ([5] * 64, None, True, "messages",
     "the prompt is 64 tokens: it leaves no room for an answer in the model's context of 64 tokens"),
    ([5] * 70, 0, False, "prompt", "the prompt is 70 tokens: it is longer than the model's context of 64 tokens")])
def test_a_prompt_that_alone_fills_the_context_is_named(prompt, wanted, chat, param, message):
    """A chat request without max_tokens said "1 more was asked for" (param max_tokens); echo with max_tokens 0
    said "and 0 more were asked for"."""
    from kgpt2.serve import Service
    from kgpt2.serving.serve_schema import ChatRequest, CompletionRequest, OpenAIError

    service = Service.__new__(Service)
    service.model_id, service.engine = "tiny", SimpleNamespace(cache_length=64, tokenizer=SimpleNamespace(eos_id=0))
    body = (ChatRequest(model="tiny", messages=[{"role": "user", "content": "x"}]) if chat
            else CompletionRequest(model="tiny", prompt=prompt, echo=True, max_tokens=0))
    with pytest.raises(OpenAIError) as refused:
        service.prepare(body, prompt, wanted)
    error = refused.value.body["error"]
    assert (error["message"], error["param"], error["code"]) == (message, param, "context_length_exceeded")


def test_nan_sampling_fields_must_be_finite(http):
    """NaN passed `le=2` checks' wording: "Input should be less than or equal to 2"."""
    for field in ("temperature", "top_p"):
        e = error(http, "/v1/completions", b'{"model": "tiny", "prompt": "x", "%s": NaN}' % field.encode())
        assert (e["param"], e["message"]) == (field, f"{field}: Input should be a finite number")


@pytest.mark.parametrize("route, field, value, message", [
    ("/v1/completions", "best_of", 2, "best_of: kgpt2 serve does not support it; leave it out or send 1"),
    ("/v1/completions", "suffix", "end", 'suffix: kgpt2 serve does not support it; leave it out or send ""'),
    ("/v1/completions", "presence_penalty", 0.5, "presence_penalty: kgpt2 serve does not support it; leave it out "
                                                 "or send 0"),
    ("/v1/chat/completions", "frequency_penalty", -1, "frequency_penalty: kgpt2 serve does not support it; leave it "
                                                      "out or send 0"),
    ("/v1/chat/completions", "logit_bias", {"50256": -100}, "logit_bias: kgpt2 serve does not support it; leave it out "
                                                            "or send {}")])
def test_unsupported_openai_fields_are_refused_by_name(http, route, field, value, message):
    """They were silently ignored (200, as if not sent)."""
    body = {"model": "tiny", "prompt": "x"} if route == "/v1/completions" else {
        "model": "tiny", "messages": [{"role": "user", "content": "x"}]}
    e = error(http, route, json.dumps(body | {field: value}).encode())
    assert (e["param"], e["message"]) == (field, message)


def test_unsupported_fields_at_their_neutral_values_are_accepted():
    """LangChain sends presence_penalty 0, frequency_penalty 0, logit_bias {}, best_of 1 by default."""
    from kgpt2.serving.serve_schema import ChatRequest, CompletionRequest

    neutral = dict(presence_penalty=0, frequency_penalty=0.0, logit_bias={})
    CompletionRequest(model="tiny", prompt="x", best_of=1, suffix="", **neutral)
    CompletionRequest(model="tiny", prompt="x", n=3, best_of=3, suffix=None)
    ChatRequest(model="tiny", messages=[{"role": "user", "content": "x"}], **neutral)


@pytest.mark.parametrize("route, body, param", [
    ("/v1/completions", rb'{"model": "tiny", "prompt": "a\ud83d"}', "prompt"),
    ("/v1/completions", rb'{"model": "tiny", "prompt": ["ok", "a\udc00b"]}', "prompt.1"),
    ("/v1/completions", rb'{"model": "t\ud83diny", "prompt": "x"}', "model"),
    ("/v1/completions", rb'{"model": "tiny", "prompt": "x", "stop": ["\ud83d"]}', "stop.0"),
    ("/v1/chat/completions", rb'{"model": "tiny", "messages": [{"role": "user", "content": "a\ud83d"}]}',
     "messages.0.content"),
    ("/v1/chat/completions", rb'{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", '
                             rb'"text": "\ud83d"}]}]}', "messages.0.content.0.text")])
def test_text_that_is_not_valid_unicode_is_a_400_naming_the_field(served, route, body, param):
    """A lone surrogate (JSON's "\\ud83d" without its pair) was a bare 500: the tokenizer cannot encode it, nor
    the JSON of an error that quoted it."""
    r = served.post(route, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    e = r.json()["error"]
    assert e["param"] == param and e["message"] == (
        f"{param} is not valid Unicode text: it holds a lone surrogate (a \\ud800-\\udfff escape without its pair)")


# A Service on the real tokenizer code and an engine that runs nothing (slots 4, queue 8, the instruction
# template): every refusal below comes before anything is submitted.
@pytest.fixture(scope="module")
def service():
    from kgpt2.generate import Settings
    from kgpt2.model.tokenizer import Tokenizer
    from kgpt2.serve import Service

    tokenizer = Tokenizer.train(["Hello world, hello GPT-2. " * 20], vocab_size=300)
    engine = SimpleNamespace(tokenizer=tokenizer, cache_length=64, slots=4, busy=0)
    return Service(engine, "tiny", Settings(template="instruction"), max_queue=8)


@pytest.fixture(scope="module")
def served(service):
    return TestClient(build_app(service))


def test_a_prompt_too_long_by_its_characters_is_refused_before_tokenizing(served, service):
    """A 10 MB prompt was tokenized on the event loop before the length check: every client waited seconds."""
    import time

    tokenizer = service.engine.tokenizer
    longest = max(len(token) for token in tokenizer.vocabulary)  # a byte-level token: a character per byte
    assert service.most_chars == 64 * longest
    began = time.perf_counter()
    repeats = (service.most_bytes - 1_000) // 12  # the longest text the body's byte bound lets through
    r = served.post("/v1/completions", json={"model": "tiny", "prompt": "Hello world " * repeats, "max_tokens": 1})
    assert time.perf_counter() - began < 2  # tokenizing its megabytes takes longer
    e = r.json()["error"]
    assert r.status_code == 400 and (e["param"], e["code"]) == ("prompt", "context_length_exceeded")
    assert e["message"] == (f"prompt is {12 * repeats:,} characters, more than the model's context of 64 tokens can "
                            f"hold (at most {64 * longest:,} characters)")
    # Just over the bound, in one prompt of a list or a chat's messages together: refused by the count alone.
    over = "Hello world, hello GPT-2. " * (64 * longest // 26) + "x" * (64 * longest % 26 + 1)
    assert len(tokenizer.encode(over)) > 64  # what the bound promises
    r = served.post("/v1/completions", json={"model": "tiny", "prompt": ["x", over]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    halves = [{"role": "system", "content": over[:100]}, {"role": "user", "content": over[100:]}]
    r = served.post("/v1/chat/completions", json={"model": "tiny", "messages": halves})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_a_request_that_can_never_fit_is_a_400_not_a_429(served, service):
    """prompts x n above slots + max_queue was "the server's queue is full; retry later" (429): retrying never
    helps. A request that fits an idle server still gets the 429 while the server is busy."""
    r = served.post("/v1/completions", json={"model": "tiny", "prompt": ["x", "y"], "n": 7, "max_tokens": 1})
    e = r.json()["error"]
    assert r.status_code == 400 and e["param"] == "n"
    assert e["message"] == ("the request needs 14 generations (2 prompts × n = 7) and this server holds at most 12 at "
                            "once (its slots and waiting queue); send fewer prompts or a smaller n")
    from kgpt2.serve import Service
    from kgpt2.serving.serve_schema import CompletionRequest, OpenAIError

    busy = Service.__new__(Service)
    busy.engine, busy.max_queue = SimpleNamespace(slots=4, busy=3), 8
    with pytest.raises(OpenAIError) as refused:
        busy.check_room(CompletionRequest(model="tiny", prompt="x", n=10), 1)
    assert refused.value.status == 429


@pytest.mark.parametrize("after", [{"role": "assistant", "content": "Once upon"},
                                   {"role": "system", "content": "Be brief."}])
def test_the_instruction_template_refuses_messages_after_the_last_user_message(served, after):
    """A trailing assistant message (a continuation) was silently dropped: the same prompt tokens without it."""
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Tell a story."}, after]
    r = served.post("/v1/chat/completions", json={"model": "tiny", "messages": messages, "max_tokens": 2})
    e = r.json()["error"]
    assert r.status_code == 400 and e["param"] == "messages.2"
    article = "an" if after["role"] == "assistant" else "a"
    assert e["message"] == (f"messages[2] is {article} {after['role']} message after the last user message; the run's "
                            "instruction template answers the last user message and cannot continue after it (end "
                            "with a user message, or serve a run with the chat template)")
    alone = [{"role": "assistant", "content": "Once upon"}]  # no user message at all
    e = served.post("/v1/chat/completions", json={"model": "tiny", "messages": alone, "max_tokens": 2}).json()["error"]
    assert e["message"].startswith("messages[0] is an assistant message and no user message comes before it; ")


def test_the_api_key_scheme_is_case_insensitive_and_checked_before_the_body():
    """`bearer KEY` was a 401 (RFC 7235: the scheme is case-insensitive); a request without the key and with a
    bad body got the 400 that described the body."""
    engine = SimpleNamespace(busy=0, slots=1)
    app = TestClient(build_app(SimpleNamespace(model_id="tiny", created=0, engine=engine), api_key="secret"))
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert app.get("/v1/models", headers={"authorization": f"{scheme} secret"}).status_code == 200
    for given in ("Bearer wrong", "Basic secret", "secret", ""):
        assert app.get("/v1/models", headers={"authorization": given}).status_code == 401
    for body in (b"{not json", b'{"model": "tiny"}'):
        r = app.post("/v1/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert app.get("/health").status_code == 200  # health needs no key


@pytest.mark.slow  # loads the tiny run when the prompt is good
def test_generate_with_a_prompt_that_is_not_utf8_is_one_line_and_status_2(kgpt2_cli, tiny_run):
    """`kgpt2 generate --prompt $'ab\\xffcd'`: Python makes the byte a lone surrogate (surrogateescape), which the
    tokenizer cannot encode; it was a traceback and status 1."""
    done = kgpt2_cli("generate", "--run", tiny_run, "--prompt", "ab\udcffcd", "--max-new-tokens", 2)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "kgpt2: error: --prompt is not valid UTF-8 text (character 3 is not); check the encoding of the terminal or "
        "script that passed it")


def test_the_service_starts_without_decoding_the_vocabulary(service):
    """Service.__init__ decoded every id to find the longest token (~0.1 s for GPT-2's vocabulary at each start);
    the vocabulary's strings give the bound, and it still holds: no token covers more characters of text."""
    from kgpt2.generate import Settings
    from kgpt2.serve import Service

    tokenizer = service.engine.tokenizer

    class Counting:  # the tokenizer, counting its decodes
        decodes = 0

        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def decode(self, ids):
            Counting.decodes += 1
            return tokenizer.decode(ids)

    started = Service(SimpleNamespace(tokenizer=Counting(), cache_length=64, slots=1, busy=0), "tiny", Settings())
    assert Counting.decodes == 0
    covered = max(len(tokenizer.decode([i])) for i in range(tokenizer.vocab_size))  # characters of text a token
    assert covered <= started.most_chars // 64 == service.most_chars // 64


def test_an_unknown_path_is_a_404_whatever_the_key():
    """With --api-key, GET /nope without a key answered 401 (so a client with a typo in its base URL was told
    its key was wrong); OpenAI answers an unknown URL 404, which the `openai` client raises as NotFoundError."""
    engine = SimpleNamespace(busy=0, slots=1)
    app = TestClient(build_app(SimpleNamespace(model_id="tiny", created=0, engine=engine), api_key="secret"))
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Bearer secret"}):
        for method, path in (("GET", "/nope"), ("POST", "/v1/nope"), ("GET", "/v1/completions/x")):
            r = app.request(method, path, headers=headers)
            assert r.status_code == 404, (method, path, headers, r.text)
            assert r.json()["error"]["message"].startswith(f"no route {method} {path}; this server has ")
    assert app.get("/v1/models").status_code == 401  # real endpoints still need the key
    assert app.post("/v1/completions", json={"model": "tiny", "prompt": "x"}).status_code == 401
    assert app.get("/v1/models", headers={"authorization": "Bearer secret"}).status_code == 200


def test_a_lone_surrogate_is_found_without_walking_every_token_id():
    """The check for lone surrogates ran a Python call per item of every list on the event loop: a prompt of a
    million token ids held every other stream for 0.3 s (3 s on a busy machine). Lists are now judged whole
    (their items' types, their strings joined and encoded once): a few Python calls whatever the length, and a
    bad string is still named."""
    import sys

    from kgpt2.serving.serve_schema import ChatRequest, CompletionRequest, _not_unicode

    body = CompletionRequest(model="tiny", prompt=[list(range(1000))] * 100 + [list(range(50_000))])
    calls = []

    def count(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_name)

    sys.setprofile(count)
    try:
        assert _not_unicode(body) is None
    finally:
        sys.setprofile(None)
    assert len(calls) < 500, f"{len(calls)} Python calls for 150,000 token ids"
    with pytest.raises(ValueError, match=r"prompt\.1000 is not valid Unicode text"):
        CompletionRequest(model="tiny", prompt=["fine"] * 1000 + ["a\ud83d"])
    with pytest.raises(ValueError, match=r"messages\.3\.content\.1\.text is not valid Unicode text"):
        ChatRequest(model="tiny", messages=[{"role": "user", "content": "ok"}] * 3 + [
            {"role": "user", "content": [{"type": "text", "text": "ok"}, {"type": "text", "text": "\udfff"}]}])


@pytest.mark.parametrize("content_type, said", [
    ("text/plain", "is text/plain"), ("application/x-www-form-urlencoded", "is application/x-www-form-urlencoded"),
    (None, "is not set")])
def test_a_json_object_sent_without_a_json_content_type_names_the_header(http, content_type, said):
    """FastAPI reads a body as JSON only under a JSON content type (`curl -d` sends a form's): a JSON object was
    answered "the request body must be a JSON object"."""
    r = http.post("/v1/completions", content=b'{"model": "tiny", "prompt": "x"}',
                  headers={"content-type": content_type} if content_type else {})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == ("the request body must be JSON sent with the header Content-Type: "
                                            f"application/json (this request's Content-Type {said})")


def test_an_empty_body_says_so(http):
    assert error(http, "/v1/completions", b"")["message"] == "the request body is empty: send a JSON object"


@pytest.mark.parametrize("body, message", [
    (b'{"model": "tiny", "prompt": "\xff"}', "the request body is not valid JSON: it is not UTF-8 text (byte 0xff "
                                            "at position 29)"),
    (b"[" * 100_000 + b"]" * 100_000, "the request body nests lists or objects too deeply to be read"),
    (b'{"model": "tiny", "prompt": [%s]}' % (b"9" * 5000), "the request body holds a number of more than 4,300 "
                                                           "digits, too long to be read")])
def test_a_body_json_loads_cannot_read_says_why(http, body, message):
    """FastAPI answers these "There was an error parsing the body"."""
    assert error(http, "/v1/completions", body)["message"] == message
