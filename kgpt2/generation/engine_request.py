"""One generation request as the engine fills it in: its sampling, tokens, text, scores and end.

The engine (kgpt2.generation.engine) writes into a `Request` from its own thread; the
caller reads `take_text()` for the text that can no longer change (a split
UTF-8 character or the start of a stop string is held back).

    >>> from kgpt2.generation.engine_request import Request, Sampling
    >>> r = Request(ids=[1, 2], sampling=Sampling(), total=8, stop=("END",))
    >>> r.text = "Hello EN"
    >>> r.take_text(), r.finished
    ('Hello ', False)
    >>> r.text = "Hello ENd"; r._finish("length"); r.take_text()
    'ENd'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Sampling:
    """One request's sampling, as the engine runs it (greedy ignores the rest)."""

    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 1 << 30  # >= vocabulary: no cut
    top_p: float = 1.0
    seed: int = 0


@dataclass(eq=False)
class Request:
    """One generation: filled in by the engine; read `tokens`, `text`, `finish_reason`.

    With `logprobs` (0..MAX_LOGPROBS alternatives) each new token gets a score
    `(log-probability, [(id, log-probability)] of the top ones)` in `scores`, the
    end-of-text that stopped it included (`ended_on_eos`); with `echo` too, every prompt
    token after the first gets one in `prompt_scores`. `total == len(ids)` with `echo`:
    nothing to generate (the prompt scored, when `logprobs`).
    """

    ids: list[int]
    sampling: Sampling
    total: int  # prompt + new tokens, at most
    stop: tuple = ()  # stop strings: the text ends before the first one
    listener: Callable[[], None] | None = None  # called (from the engine's thread) after each update
    logprobs: int | None = None  # None: no scores
    echo: bool = False
    tokens: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    prompt_scores: list = field(default_factory=list)
    ended_on_eos: bool = False
    text: str = ""
    finish_reason: str | None = None  # "stop", "length", "cancelled" or "error"
    error: str = ""
    cancelled: bool = False
    _sent: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def scored(self) -> bool:
        """Whether the prompt's tokens are scored (its prefill computes every position's logits)."""
        return self.echo and self.logprobs is not None

    def _score(self, logprob, values, ids) -> tuple:
        k = self.logprobs or 0
        return float(logprob), [(int(i), float(v)) for i, v in zip(ids[:k], values[:k])]

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the engine's next step."""
        self.cancelled = True

    def take_text(self) -> str:
        """The text produced since the last call that can no longer change."""
        finished, text = self.finished, self.text  # one snapshot: the engine's thread may update both
        if finished and self.finish_reason == "cancelled":
            # Stopped at an arbitrary token: a character it split stays out (a stop string's prefix is real text).
            ready = self._stable_length(text, stops=())
        else:
            ready = len(text) if finished else self._stable_length(text, self.stop)
        piece, self._sent = text[self._sent:ready], max(self._sent, ready)
        return piece

    def _stable_length(self, text: str, stops: tuple) -> int:
        """Hold back a partial UTF-8 character and any tail that may begin one of `stops`."""
        end = len(text) - (1 if text.endswith("\ufffd") else 0)
        for s in stops:
            for k in range(min(len(s) - 1, end), 0, -1):
                if text[:end].endswith(s[:k]):
                    end -= k
                    break
        return max(end, self._sent)

    def _finish(self, reason: str) -> None:
        self.finish_reason = reason
        self._notify()

    def _notify(self) -> None:
        try:
            if self.listener:
                self.listener()
        except Exception:  # e.g. the listener's event loop has closed: that must not stop the engine
            pass
