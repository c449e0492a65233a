"""`kgpt2 serve`'s streamed answers as the socket sees them: what one wake-up of the engine produced goes out as one
write, so a client that leaves mid-stream is noticed before a burst of writes to its closed connection."""

import asyncio

import pytest

from kgpt2.serving.serve_answers import events
from kgpt2.serving.serve_responses import completion_shape
from kgpt2.serving.serve_schema import CompletionRequest

pytestmark = pytest.mark.backend_neutral


class Decoding:
    """A request the engine decodes: text arrives with `add`, `take_text` hands out what came since."""

    def __init__(self):
        self.text, self.taken, self.tokens, self.finished, self.finish_reason, self.error = "", 0, [], False, None, None

    def add(self, piece, finish=None):
        self.text += piece
        self.tokens.append(0)
        self.finished, self.finish_reason = finish is not None, finish

    def take_text(self):
        piece, self.taken = self.text[self.taken:], len(self.text)
        return piece

    def cancel(self):
        pass


def writes(requests, steps) -> list[str]:
    """What the stream yields (each yield is one write to the socket) while `steps` run, one wake-up each."""
    body = CompletionRequest(model="m", prompt="x", n=len(requests), stream=True)
    envelope, choice = completion_shape("cmpl-1", 0, "m", None, body)

    async def run():
        woken, out = asyncio.Queue(), []
        stream = events(requests, woken, envelope, choice, lambda: {"prompt_tokens": 1})
        out.append(await anext(stream))
        for step in steps:
            step()
            woken.put_nowait(None)
            out.append(await anext(stream))
        out.extend([part async for part in stream])
        return out
    return asyncio.run(run())


def test_a_wake_up_of_n_choices_is_one_write():
    """The first chunks of 8 choices were 8 writes, and each wake-up's pieces one write per choice: a client that
    had just left got bursts of writes the event loop could not stop, and asyncio printed "socket.send() raised
    exception." on the server's console (7 times in 20 clients leaving an n=8 stream)."""
    requests = [Decoding() for _ in range(8)]
    out = writes(requests, [lambda: [r.add("a") for r in requests],
                            lambda: [r.add("b", "length") for r in requests]])
    assert len(out) == 4  # the first chunks, two wake-ups, the end
    assert [part.count("data: ") for part in out] == [8, 8, 8, 1]
    assert out[-1] == "data: [DONE]\n\n"
    assert [part.count('"finish_reason": "length"') for part in out] == [0, 0, 8, 0]
    assert out[2].count('"usage"') == 1  # on the last choice's last chunk only


def test_a_wake_up_with_an_error_ends_with_it_in_the_same_write():
    requests = [Decoding() for _ in range(2)]

    def fail():
        requests[0].add("a")
        requests[1].add("", "error")
        requests[1].error = "boom"
    out = writes(requests, [fail])
    assert len(out) == 2 and out[1].count("data: ") == 2
    assert '"text": "a"' in out[1] and out[1].endswith('"message": "boom", "type": "server_error", "param": null, '
                                                        '"code": null}}\n\n')
