"""`kgpt2 serve`: a run's model behind an OpenAI-compatible HTTP API, on the batched engine.

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (messages
rendered with the run's prompt template; the `chat` template's ids are
those `kgpt2 train` trained on, end-of-text ids between the turns),
`GET /v1/models`, `GET /health`.
`"stream": true` answers with server-sent events as OpenAI does. Requests
from all clients decode together in the engine's slots; when the slots and
the waiting queue are full the answer is 429. Errors use OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, so the official `openai`
client raises its usual exceptions. FastAPI validates the bodies (their
models, chat content parts and the 400s: kgpt2.serving.serve_schema) and uvicorn
serves them (it also turns SIGTERM into a clean shutdown); kgpt2.serving.serve_answers
runs a request on the engine and answers it, whole or streamed; kgpt2.serving.serve_log
writes a line per finished request.

Sampling: a field the request leaves out takes the run's `[generate]`
setting; `temperature: 0` is greedy; `top_k` and `seed` are accepted as
extensions (`extra_body` in the `openai` client).

Scoring: `logprobs` (0..5) and `echo` on completions, `logprobs` /
`top_logprobs` on chat (kgpt2.generation.logprobs makes the objects); the model's
float32 log-softmax before temperature / top-k / top-p; not streamed.

    >>> from kgpt2.serve import chat_prompt
    >>> chat_prompt([{"role": "user", "content": "Name a colour."}], "instruction").splitlines()[0]
    '### Instruction:'
    >>> # serve("checkpoints/alpaca", port=8000)  then  OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-")
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from kgpt2.errors import UserError
from kgpt2.generate import Settings, load_for_generation
from kgpt2.generation.engine import Engine, Sampling
from kgpt2.generation.templates import chat_prompt_ids, render_prompt
from kgpt2.reports import counted
from kgpt2.run import load_run_config
from kgpt2.serving.checkpoint_names import resolve as resolve_checkpoint
from kgpt2.serving.ports import check_port
from kgpt2.serving.serve_answers import answer
from kgpt2.serving.serve_log import RequestEdge
from kgpt2.serving.serve_responses import chat_shape, completion_shape, response_id
from kgpt2.serving.serve_schema import (
    DEFAULT_MAX_TOKENS,
    BodyCheck,
    ChatRequest,
    CompletionRequest,
    OpenAIError,
    SampledRequest,
    json_values,
    message_texts,
    prompt_ids,
    unparsable_body,
    validation_error,
)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def chat_prompt(messages: list[dict], template: str) -> str:
    """Messages as one prompt: the last user message is the instruction, what precedes it its input.

    With the `plain` template the contents are joined by blank lines: a plain
    language model continues the conversation as text. The `instruction`
    template has no place for a message after the instruction (a 400 says so
    rather than leaving it out), nor for an assistant message to continue.
    """
    if template != "instruction":
        return "\n\n".join(m["content"] for m in messages) + "\n\n"
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    last = users[-1] if users else len(messages) - 1  # no user message: the last message is the instruction
    if last < len(messages) - 1 or messages[last]["role"] == "assistant":
        i = last + 1 if last < len(messages) - 1 else last
        role = messages[i]["role"]
        where = "after the last user message" if users else "and no user message comes before it"
        raise OpenAIError(400, f"messages[{i}] is {'an' if role[0] in 'aeiou' else 'a'} {role} message {where}; the "
                          "run's instruction template answers the last user message and cannot continue after it "
                          "(end with a user message, or serve a run with the chat template)", param=f"messages.{i}")
    context = "\n".join(m["content"] for m in messages[:last])
    return render_prompt(messages[last]["content"], "instruction", context)


def chat_ids(tokenizer, messages: list[dict], template: str) -> list[int]:
    """The ids a chat request prompts with: the `chat` template's (a developer turn is a system turn),
    else the tokens of `chat_prompt`'s text."""
    if template == "chat":
        turns = [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
                 for m in messages]
        return chat_prompt_ids(tokenizer, turns)
    return tokenizer.encode(chat_prompt(messages, template))


def longest_token(tokenizer) -> int:
    """The most characters of text one token can cover: its vocabulary string's length. A byte-level BPE token's
    string has a character per byte it stands for (and a byte is at most a character of the text), a special
    token's string is its text (a character tokenizer's end-of-text never comes from text: a character a token);
    so a text longer than the context times this has more tokens than fit. Read from the vocabulary's strings,
    not by decoding each id (~0.1 s for GPT-2's 50,257 at every start, more on a busy machine)."""
    return 1 if tokenizer.kind == "char" else max(map(len, tokenizer.vocabulary))


def _past_context(body: SampledRequest, length: int, wanted: int, context: int) -> str:
    """The 400's sentence when the prompt and the new tokens overflow the context. A completion that left
    max_tokens out asked for none: its default did, and the sentence says so and what to send instead."""
    prompt = f"the prompt is {counted(length, 'token')}"
    if isinstance(body, CompletionRequest) and body.max_tokens is None and wanted == DEFAULT_MAX_TOKENS:
        room, short = context - length, context - DEFAULT_MAX_TOKENS  # short: a prompt that leaves the default room
        fixes = ([f"set max_tokens to at most {room:,}"] if room > 0 else []) + (
            [f"shorten the prompt to at most {short:,} tokens"] if short > 0 else
            [f"shorten the prompt to at most {context - 1:,} tokens and set max_tokens to fit"])
        fix = " or ".join(fixes)
        return (f"{prompt} and max_tokens was not set; its default of {DEFAULT_MAX_TOKENS} more tokens does not fit "
                f"the model's context of {context} tokens: {fix}")
    return (f"{prompt} and {wanted:,} more {'was' if wanted == 1 else 'were'} asked for; "
            f"the model's context is {context} tokens")


class Service:
    """The engine, the run's defaults and the queue limit, shared by all routes."""

    def __init__(self, engine: Engine, model_id: str, defaults, max_queue: int = 64):
        self.engine, self.model_id, self.defaults, self.max_queue = engine, model_id, defaults, max_queue
        self.created = int(time.time())
        self.most_chars = engine.cache_length * longest_token(engine.tokenizer)
        # The most values a body needs: its prompts' token ids (at most slots + queue prompts, each within the
        # context), room for chat messages and content parts (16 a token of context) and other fields.
        self.most_values = (engine.slots + max_queue + 16) * engine.cache_length + 10_000
        # The most bytes: as many texts, each of the most characters a context holds, every character escaped
        # as JSON's longest form (12 bytes: a surrogate pair of \uXXXX), and a MiB for the rest. Bounds the
        # memory one body takes before it is refused (a body is read whole before it is parsed).
        self.most_bytes = (engine.slots + max_queue + 16) * self.most_chars * 12 + 2**20

    def check_body(self, raw: bytes) -> None:
        """400 for a body with more values than any request within the context: refused before it is parsed."""
        values = json_values(raw, self.most_values)
        if values > self.most_values:
            prompts = self.engine.slots + self.max_queue
            raise OpenAIError(400, f"the request body holds at least {values:,} values (token ids, strings, numbers), "
                              f"more than any request to this server needs (at most {self.most_values:,}: up to "
                              f"{prompts} prompts within the model's context of {self.engine.cache_length} tokens); "
                              "send shorter or fewer prompts", code="context_length_exceeded")

    def check_chars(self, chars: int, param: str) -> None:
        """400 for a text too long to fit by its characters alone: refused before tokenizing it (seconds on megabytes)."""
        if chars > self.most_chars:
            raise OpenAIError(400, f"{param} is {counted(chars, 'character')}, more than the model's context of "
                              f"{self.engine.cache_length} tokens can hold (at most {self.most_chars:,} characters)",
                              param=param, code="context_length_exceeded")

    def sampling(self, body: SampledRequest) -> Sampling:
        s = self.defaults.sampling()
        if body.temperature is not None:
            s = replace(s, greedy=body.temperature == 0, temperature=body.temperature or 1.0)
        for name in ("top_p", "top_k", "seed"):
            if getattr(body, name) is not None:
                s = replace(s, **{name: getattr(body, name)})
        return s

    def check_room(self, body: SampledRequest, prompts: int) -> None:
        """400 when the request's generations exceed what the server ever holds (retrying cannot help), else 429
        unless they fit the free slots and the waiting queue now."""
        count, most = prompts * body.n, self.engine.slots + self.max_queue
        if count > most:
            raise OpenAIError(400, f"the request needs {count} generations ({counted(prompts, 'prompt')} × n = "
                              f"{body.n}) and this server holds at most {most} at once (its slots and waiting "
                              "queue); send fewer prompts or a smaller n", param="n" if body.n > 1 else "prompt")
        if self.engine.busy + count > most:
            raise OpenAIError(429, "the server's queue is full; retry later", type="rate_limit_exceeded",
                              code="rate_limit_exceeded")

    def prepare(self, body: SampledRequest, ids: list[int], max_tokens: Optional[int]):
        """(ids, total length, stop strings) of one prompt, or raise the OpenAI error a client should see."""
        if body.model != self.model_id:
            raise OpenAIError(404, f"The model '{body.model}' does not exist; this server has '{self.model_id}'",
                              param="model", code="model_not_found")
        engine = self.engine
        ids = list(ids) or [engine.tokenizer.eos_id]  # empty: a new document
        room, wanted = engine.cache_length - len(ids), 1 if max_tokens is None else max_tokens
        if wanted > room and not max_tokens:  # no max_tokens (up to the context), or 0 (echo: score the prompt)
            where = "messages" if isinstance(body, ChatRequest) else "prompt"
            fills = "leaves no room for an answer in" if max_tokens is None else "is longer than"
            raise OpenAIError(400, f"the prompt is {counted(len(ids), 'token')}: it {fills} the model's context "
                              f"of {engine.cache_length} tokens", param=where, code="context_length_exceeded")
        if wanted > room:  # named as the client sent it: chat's max_completion_tokens wins over max_tokens
            field = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
            raise OpenAIError(400, _past_context(body, len(ids), wanted, engine.cache_length), param=field,
                              code="context_length_exceeded")
        stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
        if len(stop) > 4:
            raise OpenAIError(400, "at most 4 stop sequences", param="stop")
        return ids, len(ids) + (room if max_tokens is None else max_tokens), stop

    def submit(self, body: SampledRequest, prepared, listener, choice: int = 0):
        """Queue choice `choice` of a prepared prompt (a seeded request's choice j samples with seed + j)."""
        ids, total, stop = prepared
        sampling = self.sampling(body)
        if body.seed is not None:  # n choices of one seeded request: different and reproducible
            sampling = replace(sampling, seed=body.seed + choice)
        else:  # as OpenAI's API: no seed, no repeats (the run's generate.seed would make every choice the same)
            sampling = replace(sampling, seed=secrets.randbits(31))
        if isinstance(body, ChatRequest):
            logprobs, echo = (body.top_logprobs or 0) if body.logprobs else None, False
        else:
            logprobs, echo = body.logprobs, body.echo
        return self.engine.submit(ids, sampling, total, stop, listener, logprobs=logprobs, echo=echo)


def _check_stream_options(body: SampledRequest) -> None:
    if body.stream_options is not None and not body.stream:
        raise OpenAIError(400, "stream_options is only allowed with stream: true", param="stream_options")


def _check_scoring(stream: bool, logprobs: bool) -> None:
    if stream and logprobs:
        raise OpenAIError(400, "logprobs are not streamed: ask for them without stream", param="stream")


def _answer_errors_as_openai(app: FastAPI) -> None:
    """Every error a client can get in OpenAI's shape: kgpt2's own, a bad body (400), a wrong path or method."""

    @app.exception_handler(OpenAIError)
    async def openai_error(_, e: OpenAIError):
        return JSONResponse(e.body, status_code=e.status)

    @app.exception_handler(UserError)  # kgpt2's own sentence about a request's input (a character tokenizer
    async def user_error(_, e: UserError):  # meeting a character it has no id for): a 400, not a 500
        return JSONResponse(OpenAIError(400, str(e)).body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def no_route(http: Request, e: StarletteHTTPException):  # FastAPI's {"detail": ...}, in OpenAI's shape
        message = str(e.detail)
        if e.status_code == 400 and e.__cause__ is not None:  # FastAPI's: json.loads raised no JSON syntax error
            message = unparsable_body(e.__cause__)
        if e.status_code in (404, 405):  # the routes as the app declares them
            routes = ", ".join(f"{m} {r.path}" for r in app.routes if r.path.startswith(("/v1", "/health"))
                               for m in sorted(getattr(r, "methods", ())))
            message = f"no route {http.method} {http.url.path}; this server has {routes}"
        return JSONResponse(OpenAIError(e.status_code, message).body, status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(http: Request, e: RequestValidationError):
        return JSONResponse(validation_error(e.errors(), http.headers.get("content-type", "")).body, status_code=400)


class RequireKey:
    """ASGI middleware: with an API key, every route but /health answers 401 without `Authorization: Bearer KEY`,
    before its body is read or validated (a client without the key learns nothing from the API's errors).
    A path and method the app has no route for stays a 404 (405) whatever the key, as OpenAI answers one."""

    def __init__(self, app, api_key: str | None):
        self.app, self.key = app, (api_key or "").encode()

    async def __call__(self, scope, receive, send):
        if (scope["type"] == "http" and self.key and scope["path"] != "/health" and _routed(scope)
                and not self._authorized(scope)):
            error = OpenAIError(401, "Incorrect API key provided", code="invalid_api_key")
            return await JSONResponse(error.body, status_code=401)(scope, receive, send)
        await self.app(scope, receive, send)

    def _authorized(self, scope) -> bool:
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, key = given.partition(b" ")
        same = secrets.compare_digest(key.strip(), self.key)  # constant time: no timing hints about the key
        return same and scheme.lower() == b"bearer"  # the scheme is case-insensitive (RFC 7235)


def _routed(scope) -> bool:
    """Whether the app (Starlette puts itself in the scope) has a route for this path and method."""
    return any(route.matches(scope)[0] == Match.FULL for route in scope["app"].router.routes)


def build_app(service: Service, api_key: str | None = None, log_requests: bool = False) -> FastAPI:
    """The FastAPI application: routes, API-key check, errors in OpenAI's shape, a log line per request."""
    app = FastAPI(title="kgpt2", docs_url=None, redoc_url=None)
    if hasattr(service, "check_body"):  # (a test's stand-in service may have none)
        app.add_middleware(BodyCheck, check=service.check_body, most_bytes=service.most_bytes)  # inside RequireKey: no body is read without the key
    app.add_middleware(RequireKey, api_key=api_key)  # inside RequestEdge: a 401 is logged too
    app.add_middleware(RequestEdge, log_requests=log_requests)  # the 503 at shutdown; a line per request
    _answer_errors_as_openai(app)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": service.model_id, "busy": service.engine.busy, "slots": service.engine.slots}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": service.model_id, "object": "model", "created": service.created,
                                            "owned_by": "kgpt2"}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        tokenizer = service.engine.tokenizer
        _check_scoring(body.stream, body.logprobs is not None)
        _check_stream_options(body)
        if body.max_tokens == 0 and not body.echo:
            raise OpenAIError(400, "max_tokens: 0 generates nothing; with echo: true it scores the prompt",
                              param="max_tokens")
        for text in [body.prompt] if isinstance(body.prompt, str) else body.prompt:
            if isinstance(text, str):
                service.check_chars(len(text), "prompt")
        # Tokenizing takes time on long texts: off the event loop, so that other clients' answers go on.
        ids = await asyncio.to_thread(prompt_ids, tokenizer, body.prompt)
        envelope, choice = completion_shape(response_id("cmpl"), int(time.time()), service.model_id, tokenizer, body)
        wanted = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        return await answer(service, http, body, ids, wanted, envelope, choice)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: Request):
        if body.top_logprobs is not None and not body.logprobs:
            raise OpenAIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        _check_scoring(body.stream, body.logprobs)
        _check_stream_options(body)
        messages = message_texts(body.messages)  # content parts as text; an image part is a 400 naming it
        service.check_chars(sum(len(m["content"]) for m in messages), "messages")
        ids = await asyncio.to_thread(chat_ids, service.engine.tokenizer, messages, service.defaults.template)
        envelope, choice = chat_shape(response_id("chatcmpl"), int(time.time()), service.model_id, service.engine.tokenizer,
                                       body)
        return await answer(service, http, body, [ids], body.max_completion_tokens or body.max_tokens, envelope,
                             choice)

    return app


def serve(run_dir, checkpoint: str = "latest", host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          slots: int = 8, max_queue: int = 64, steps_per_launch: int = 8, weights: str | None = None,
          log_requests: bool = True) -> None:
    """Load the run, warm the engine up, serve until SIGTERM / Ctrl-C; with `log_requests` a line per request
    to the `kgpt2.serve` logger (INFO: `kgpt2 serve` prints it on stderr)."""
    import uvicorn  # deferred: only `serve` itself needs the server

    if api_key is not None and (not api_key.strip() or api_key != api_key.strip()):
        # `--api-key "$KEY"` with KEY unset would serve with no key at all, and a key with spaces at its ends is
        # one no client's Authorization header can match (the header's value is stripped)
        raise UserError("--api-key is empty or has spaces at its ends (an unset variable?); give the key itself, "
                        "or leave --api-key out to serve without one")
    check_port(host, port)  # before the slow part: loading and compiling
    load_run_config(run_dir)  # a folder that is no run says so before a checkpoint is looked for
    checkpoint, line = resolve_checkpoint(run_dir, checkpoint)  # "latest" named by its id, step and stage
    model, tokenizer, cfg = load_for_generation(run_dir, checkpoint, weights)
    # 64 steps a launch when every slot is taken (GPU)
    engine = Engine(model, tokenizer, slots=slots, steps_per_launch=steps_per_launch)
    engine.warm_up(logprobs=True)  # compiles before the first client waits
    service = Service(engine.start(), Path(run_dir).resolve().name, Settings.from_config(cfg.generate), max_queue)
    if host not in LOOPBACK and not api_key:
        print(f"warning: serving on {host} without --api-key: anyone who can reach this port can use it")
    where = f"[{host}]" if ":" in host else host  # an IPv6 address goes in brackets in a URL
    print(f"serving {service.model_id} ({line}) at http://{where}:{port}/v1 with {slots} slots", flush=True)
    # uvicorn shuts down gracefully on SIGTERM / Ctrl-C, then raises the signal
    # again for the handler it found: a quiet one lets kgpt2 close the engine and exit 0.
    quiet = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # uvicorn's own access log stays off ("warning"): kgpt2.serving.serve_log writes the request lines (why there).
        uvicorn.run(build_app(service, api_key, log_requests), host=host, port=port, log_level="warning",
                    timeout_graceful_shutdown=10)
    finally:
        engine.close()
        for sig, handler in quiet.items():
            signal.signal(sig, handler)
    print("kgpt2 serve: stopped", flush=True)
