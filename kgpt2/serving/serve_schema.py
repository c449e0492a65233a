"""The request bodies `kgpt2 serve` accepts, and how a bad one is answered (OpenAI's error shape).

The pydantic models of `/v1/completions` and `/v1/chat/completions` bodies;
`validation_error` turns FastAPI's validation errors into one OpenAI 400;
`message_texts` makes each chat message's `content` (a string, a list of
content parts, or null on an assistant turn) the text the prompt template
renders; `prompt_ids` checks a completions `prompt` and makes it ids.

A body is also refused (400, naming the field) for text that is not valid
Unicode (a lone surrogate such as `"\\ud83d"`, which no tokenizer can encode)
and for OpenAI fields kgpt2 does not implement, set to anything but their
neutral value (`presence_penalty: 0`, `logit_bias: {}`, ...; clients such as
LangChain send those by default).

Content parts, as the official `openai` client, LangChain and many UIs send
them: text parts are joined in order with a newline between them (as vLLM
does); any other part (an image, audio, a file) is a 400 naming its type, since
the model reads text only.

    >>> from kgpt2.serving.serve_schema import ChatRequest, message_texts
    >>> body = ChatRequest(model="m", messages=[{"role": "user", "content": [
    ...     {"type": "text", "text": "Name a colour."}, {"type": "text", "text": "One word."}]}])
    >>> message_texts(body.messages)
    [{'role': 'user', 'content': 'Name a colour.\\nOne word.'}]
    >>> body = ChatRequest(model="m", messages=[{"role": "user", "content": [
    ...     {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    >>> message_texts(body.messages)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    kgpt2.serving.serve_schema.OpenAIError: messages[0].content[0] is a part of type 'image_url'; this model reads text only...
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from kgpt2.generation.sampling import MAX_LOGPROBS


class OpenAIError(Exception):
    """An error answered as `{"error": {...}}` with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": type, "param": param, "code": code}}


class StreamOptions(BaseModel):
    include_usage: bool = False  # one more chunk before [DONE]: `choices: []` and the request's usage


class SampledRequest(BaseModel):
    """The fields both routes share: the model, sampling, stop strings, streaming, choices."""

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: Optional[float] = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: Optional[int] = Field(None, ge=1)  # an extension, as in vLLM
    seed: Optional[int] = Field(None, ge=-(1 << 63), lt=1 << 63)  # 64-bit, as OpenAI's
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(1, ge=1, le=16)  # choices per prompt (seed + i for choice i when a seed is given)
    # Not implemented: accepted only at their neutral values (UNSUPPORTED), else refused by name.
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, float]] = None

    @model_validator(mode="after")
    def _refuse(self):
        """A request kgpt2 cannot answer as asked: an unsupported field, or text no tokenizer can encode."""
        refused = _unsupported(self) or _not_unicode(self)
        if refused:  # `validation_error` answers it as the 400 it says
            raise PydanticCustomError("kgpt2_refused", "{message}", {"message": refused[0], "param": refused[1]})
        return self


def _prompt_shape(value) -> str:
    """Which of the prompt's shapes `value` is meant as, told by its first item: pydantic then validates that one
    shape only. Its default (smart) union tried every shape on every item: a prompt of 73,728 token ids (the most a
    server of 72 slots and queue places and a 1,024-token context takes) spent ~150 ms on the event loop collecting
    an error per id for `list[str]`, and ~1 ms so."""
    if not isinstance(value, list):
        return "text"  # a string, or no shape at all: pydantic's error names the field
    first = value[0] if value else ""
    return "texts" if isinstance(first, str) else "id_lists" if isinstance(first, list) else "ids"


# Text, texts, token ids or lists of token ids (lm-evaluation-harness sends ids).
Prompt = Annotated[Union[Annotated[str, Tag("text")], Annotated[list[str], Tag("texts")],
                         Annotated[list[int], Tag("ids")], Annotated[list[list[int]], Tag("id_lists")]],
                   Discriminator(_prompt_shape)]


DEFAULT_MAX_TOKENS = 16  # a completion's new tokens when its request leaves max_tokens out (as OpenAI's API)


class CompletionRequest(SampledRequest):
    prompt: Prompt
    max_tokens: Optional[int] = Field(None, ge=0)  # 0 with echo: score the prompt, generate nothing
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)  # top alternatives per token
    echo: bool = False  # the prompt comes back before the text (with its tokens' logprobs)
    best_of: Optional[int] = None  # accepted as 1 or n only (UNSUPPORTED)
    suffix: Optional[str] = None


class ContentPart(BaseModel):
    """One part of a message's `content` list. Only its `type` is checked here: any other type's own
    fields (`image_url`, `input_audio`, ...) are kept and the part refused by `message_texts` by name."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: Optional[str] = None
    refusal: Optional[str] = None


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    # OpenAI: an assistant turn's content may be null or left out (a turn that only called tools);
    # every other role's is required (message_texts says so).
    content: Union[str, list[ContentPart], None] = None


class ChatRequest(SampledRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)


# OpenAI fields kgpt2 serve does not implement -> (the values that change nothing, as the error names them).
UNSUPPORTED = {"presence_penalty": ((0,), "0"), "frequency_penalty": ((0,), "0"), "logit_bias": (({},), "{}"),
               "suffix": (("",), '""')}


def _unsupported(body: SampledRequest) -> Optional[tuple[str, str]]:
    """(message, param) for the first unsupported field set to something that would matter, else None."""
    for name, (neutral, shown) in UNSUPPORTED.items():
        value = getattr(body, name, None)
        if value is not None and value not in neutral:
            return f"{name}: kgpt2 serve does not support it; leave it out or send {shown}", name
    best_of = getattr(body, "best_of", None)
    if best_of not in (None, 1, body.n):  # 1 or n: every choice generated is returned, as without it
        also = f" or n ({body.n})" if body.n > 1 else ""
        return f"best_of: kgpt2 serve does not support it; leave it out or send 1{also}", "best_of"
    return None


def _not_unicode(value) -> Optional[tuple[str, str]]:
    """(message, param) for the first string in `value` (a request, its fields, their items) that is not valid
    Unicode, else None. JSON's "\\ud83d" escape without its pair decodes to a lone surrogate, which UTF-8 (and so
    the tokenizer, and the JSON of an error that quoted it) cannot encode."""
    path = _surrogate_path(value)
    if path is None:
        return None
    where = ".".join(map(str, path))
    return (f"{where} is not valid Unicode text: it holds a lone surrogate (a \\ud800-\\udfff escape "
            "without its pair)", where)


_SCALARS = {int, float, bool, type(None)}


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")  # C speed: a megabyte in about a millisecond
        return True
    except UnicodeEncodeError:
        return False


def _surrogate_path(value) -> Optional[list]:
    """The keys down to the first string of `value` that UTF-8 cannot encode, else None.

    It runs on the event loop, inside FastAPI's body validation: a list is looked at as a whole first (its
    items' types, its strings joined and encoded once), so a million token ids or strings cost milliseconds,
    and the path is built only for the string found."""
    if isinstance(value, str):
        return None if _encodes(value) else []
    if isinstance(value, BaseModel):
        value = {**value.__dict__, **(value.model_extra or {})}
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        kinds = set(map(type, value))
        if kinds <= _SCALARS or (kinds == {str} and _encodes("".join(value))):
            return None
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _surrogate_path(item)
        if found is not None:
            return [key, *found]
    return None


_TEXT_PART = '{"type": "text", "text": ...}'
# What a field of several accepted shapes takes: pydantic names a failed union by its members
# (`prompt.str`, `prompt.list[int]`), which says nothing to a client.
SHAPES = {"prompt": "a string, a list of strings, a list of token ids or a list of such lists",
          "stop": "a string or a list of up to 4 strings",
          "content": f"a string or a list of content parts ({_TEXT_PART})"}


def validation_error(errors: list[dict], content_type: Optional[str] = None) -> OpenAIError:
    """FastAPI's validation errors of a request body as one OpenAI 400: the body that is no JSON or no object,
    a union field by the shapes it takes, else the first field and pydantic's sentence.

        >>> validation_error([{"type": "json_invalid", "loc": ("body", 12), "msg": "JSON decode error",
        ...                    "ctx": {"error": "Expecting value"}}]).body["error"]["message"]
        'the request body is not valid JSON (Expecting value at character 12)'
        >>> validation_error([{"type": "string_type", "loc": ("body", "prompt", "str"),
        ...                    "msg": "Input should be a valid string"}]).body["error"]["param"]
        'prompt'
        >>> validation_error([{"type": "string_type", "loc": ("body", "messages", 0, "content", "str"),
        ...                    "msg": "Input should be a valid string"}]).body["error"]["message"][:36]
        'messages.0.content must be a string '

    `content_type` is the request's header ("" when it has none): FastAPI parses a body as JSON only under a JSON
    content type (`curl -d` sends a form's), so a JSON object sent under another is named by that header.
    """
    first = errors[0]
    if first["type"] == "kgpt2_refused":  # SampledRequest._refuse's own sentence
        return OpenAIError(400, first["msg"], param=first["ctx"]["param"])
    loc = [str(p) for p in first["loc"][1:]]  # after "body"
    if first["type"] == "json_invalid":
        why = (first.get("ctx") or {}).get("error", first["msg"])
        return OpenAIError(400, f"the request body is not valid JSON ({why}{f' at character {loc[0]}' if loc else ''})")
    if not loc:
        return OpenAIError(400, _whole_body(first["type"], content_type))
    if loc[0] in SHAPES and len(loc) > 1:  # a member of the union failed (a missing field has no member)
        return OpenAIError(400, f"{loc[0]} must be {SHAPES[loc[0]]}", param=loc[0])
    if loc[:1] == ["messages"] and loc[2:3] == ["content"] and len(loc) > 3:
        return _content_error(errors, ".".join(loc[:3]))
    where = ".".join(loc)
    return OpenAIError(400, f"{where}: {first['msg']}", param=where)


def _whole_body(kind: str, content_type: Optional[str]) -> str:
    """Why the body as a whole is refused: none, not read as JSON because of its content type, or no object."""
    if kind == "missing":
        return "the request body is empty: send a JSON object"
    media = (content_type or "").split(";")[0].strip().lower()
    if content_type is not None and not (media == "application/json" or media.endswith("+json")):
        header = f"is {media}" if media else "is not set"
        return ("the request body must be JSON sent with the header Content-Type: application/json (this "
                f"request's Content-Type {header})")
    return "the request body must be a JSON object"


def unparsable_body(cause: Optional[BaseException]) -> str:
    """Why `json.loads` failed on a body, beyond a JSON syntax error (which FastAPI reports itself): FastAPI's
    own words are "There was an error parsing the body"."""
    if isinstance(cause, UnicodeDecodeError):
        return (f"the request body is not valid JSON: it is not UTF-8 text (byte 0x{cause.object[cause.start]:02x} "
                f"at position {cause.start})")
    if isinstance(cause, RecursionError):
        return "the request body nests lists or objects too deeply to be read"
    if isinstance(cause, ValueError) and "digits" in str(cause):  # Python's limit on int() of a long string
        return "the request body holds a number of more than 4,300 digits, too long to be read"
    return "the request body could not be read as JSON"


def _content_error(errors: list[dict], where: str) -> OpenAIError:
    """A message `content` of neither shape, or (a list) the first of its parts that is no part."""
    for e in errors:
        loc = [str(p) for p in e["loc"][1:]]
        if ".".join(loc[:3]) == where and len(loc) > 4:  # messages.i.content.list[ContentPart].j[.field]
            part = ".".join([where, *loc[4:]])
            if len(loc) == 5 and e["type"] in ("model_type", "model_attributes_type"):  # the part is no object
                return OpenAIError(400, f"{part} must be a content part, such as {_TEXT_PART}", param=part)
            return OpenAIError(400, f"{part}: {e['msg']}", param=part)
    return OpenAIError(400, f"{where} must be {SHAPES['content']}", param=where)


def json_values(raw: bytes, most: int) -> int:
    """How many values (token ids, strings, numbers) a JSON body holds, at least; exact enough past `most`, which
    is all a caller asks (a body with at most `most` commas returns its comma count at once).

    What parsing a body costs goes by its values, not its bytes: a million token ids (7 MB) take ~0.1 s in
    `json.loads` and more in pydantic, a megabyte of text a millisecond. So it counts the commas outside strings
    (and the strings) with bytes methods, at C speed: ~10 ms for those 7 MB.
    """
    commas = raw.count(b",")
    if commas <= most:
        return commas
    # Inside a string JSON escapes a quote as \" and a backslash as \\: without those, quotes open and close strings
    plain = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    strings = plain.count(b'"') // 2
    if strings > most:  # every string is a value: no need to split them apart
        return strings
    return b"".join(plain.split(b'"')[::2]).count(b",") + strings


class BodyCheck:
    """ASGI middleware: each POST body goes through `check(raw)` before FastAPI parses it; an `OpenAIError` it
    raises is the answer. FastAPI's `json.loads` and pydantic's validation run on the event loop and hold the
    GIL (a thread would not help): a body of a million token ids held every client, /health and streams
    included, for half a second; refused by its size instead, before any of that. A body longer than
    `most_bytes` is refused (400, as OpenAI answers a prompt past the context) as soon as it is, without reading
    the rest into memory."""

    def __init__(self, app, check, most_bytes: int | None = None):
        self.app, self.check, self.most_bytes = app, check, most_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: no one to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if self.most_bytes is not None and size > self.most_bytes:
                e = OpenAIError(400, f"the request body is over {self.most_bytes:,} bytes, more than any request to "
                                "this server needs (its prompts must fit the model's context); send shorter or fewer "
                                "prompts", code="context_length_exceeded")
                return await JSONResponse(e.body, status_code=e.status)(scope, receive, send)
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        try:
            self.check(raw)
        except OpenAIError as e:
            return await JSONResponse(e.body, status_code=e.status)(scope, receive, send)
        replayed = False

        async def replay():  # the body once, then the client's own messages (its leaving)
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await self.app(scope, replay, send)


def message_texts(messages: list[Message]) -> list[dict]:
    """`{"role", "content"}` dicts with text contents: text parts joined by newlines, a null assistant
    content as empty text; a non-text part, or a null content on another role, is a 400 naming it."""
    out = []
    for i, m in enumerate(messages):
        content = m.content
        if content is None:
            if m.role != "assistant":
                raise OpenAIError(400, f"messages[{i}].content is required for a {m.role} message "
                                  "(only an assistant message may have none)", param=f"messages.{i}.content")
            content = ""
        elif not isinstance(content, str):
            content = "\n".join(_part_text(part, m.role, f"messages[{i}].content[{j}]", f"messages.{i}.content.{j}")
                                for j, part in enumerate(content))
        out.append({"role": m.role, "content": content})
    return out


def _part_text(part: ContentPart, role: str, where: str, param: str) -> str:
    # OpenAI's assistant content parts are `text` and `refusal`; a refusal is what the assistant said.
    field = "refusal" if part.type == "refusal" and role == "assistant" else "text" if part.type == "text" else None
    if field is None:
        readable = "'text'" + (" or 'refusal'" if role == "assistant" else "")
        raise OpenAIError(400, f"{where} is a part of type '{part.type}'; this model reads text only (parts of "
                          f"type {readable})", param=param)
    text = getattr(part, field)
    if text is None:
        raise OpenAIError(400, f"{where}: a '{part.type}' part needs a string '{field}'", param=param)
    return text


def prompt_ids(tokenizer, prompt) -> list[list[int]]:
    """A /v1/completions `prompt` (text, texts, token ids, lists of token ids) as lists of ids."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise OpenAIError(400, "prompt: at least one prompt", param="prompt")
    ids = [p if isinstance(p, list) else tokenizer.encode(p) for p in prompt]
    bad = next((t for p in ids for t in p if not 0 <= t < tokenizer.vocab_size), None)
    if bad is not None:
        raise OpenAIError(400, f"prompt: token id {bad} is not in the vocabulary (0 to {tokenizer.vocab_size - 1})",
                          param="prompt")
    return ids
