"""One comparison on the demo page and the rules of voting on it, as in Chatbot Arena.

A `Match` is two picked models answering one prompt, or (single mode) one.
In arena mode the sides are drawn at random and shown as "Model A" / "Model
B" until the answers have their votes (single mode: which of the two picks
answers is drawn, hidden until its vote); in named mode the left pick is A.

Each answer takes one vote: a thumb up or down on it (`rate`), or the pair's
vote (`record`: A better, B better, tie, both bad) that judges both answers
at once, so a pair vote is refused once either answer has a thumb. Nothing
is taken when the generation failed or was stopped (nobody saw whole
answers). Votes become kgpt2.serving.votes records.

    >>> import random
    >>> m = Match.draw(("sft", "ckpt-40"), ("dpo", "ckpt-12"), arena=True, rng=random.Random(0))
    >>> sorted([m.models["a"], m.models["b"]])
    ['dpo/ckpt-12', 'sft/ckpt-40']
    >>> m.vote_refusal() is None
    False
    >>> Match.draw(("sft", "ckpt-40"), ("dpo", "ckpt-12"), arena=False, single=True).sides
    ('a',)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kgpt2.errors import UserError
from kgpt2.serving.votes import make_rating, make_record

SIDES = ("a", "b")
VOTE_LABELS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}
RATING_LABELS = {"up": "Good answer", "down": "Bad answer"}


@dataclass
class Match:
    picks: dict  # side -> (run, checkpoint)
    arena: bool
    models: dict = field(default_factory=dict)  # side -> "run/checkpoint"
    infos: dict = field(default_factory=dict)  # side -> model information line
    answers: dict = field(default_factory=lambda: {"a": "", "b": ""})
    prompt: str = ""
    input_text: str = ""
    template: str = "plain"
    model_input: str = ""
    settings: dict = field(default_factory=dict)
    finished: bool = False  # every answer complete
    failure: str = ""  # why it did not finish (an error, or Stop)
    voted: str = ""  # the pair's choice, once voted
    rated: dict = field(default_factory=dict)  # side -> "up" / "down", once rated
    home: str = ""  # the run whose votes.jsonl takes the votes
    shown: dict = field(default_factory=dict)  # page side ("a" left, "b" right) -> (run, checkpoint) as picked there

    @classmethod
    def draw(cls, left: tuple, right: tuple, arena: bool, rng: random.Random | None = None,
             single: bool = False) -> "Match":
        """A match of the two picks (single: of the left one); in arena mode which one is A is a coin toss."""
        if arena and (rng or random).random() < 0.5:
            left, right = right, left
        picks = {"a": tuple(left)} if single else {"a": tuple(left), "b": tuple(right)}
        return cls(picks, arena, models={s: f"{r}/{c}" for s, (r, c) in picks.items()})

    @property
    def sides(self) -> tuple:
        return tuple(s for s in SIDES if s in self.picks)

    @property
    def single(self) -> bool:
        return len(self.picks) == 1

    @property
    def mode(self) -> str:
        """How the answers were shown: named, arena, single or single-arena (recorded with each vote)."""
        if self.single:
            return "single-arena" if self.arena else "single"
        return "arena" if self.arena else "named"

    def revealed(self) -> bool:
        """Identities show once every answer has its vote (all of them at once: no hint mid-vote)."""
        return not self.arena or bool(self.voted) or all(s in self.rated for s in self.sides)

    def label(self, side: str) -> str:
        """What the page shows about a side: its identity, or nothing yet in arena mode."""
        if side not in self.picks or not self.picks[side][0]:  # nothing picked on that side: no "None/None"
            return ""
        name = f"Model {side.upper()}"
        if not self.revealed():
            return f"**{name}**: hidden until you vote"
        info = self.infos.get(side)
        return f"**{name}**: `{self.models[side]}`" + (f" · {info}" if info else "")

    def _unfinished(self) -> str | None:
        if self.failure:
            return f"the last generation did not finish ({self.failure}); generate again before voting"
        if not self.finished:
            return "the answers are not finished yet; wait for them, then vote"
        return None

    def vote_refusal(self) -> str | None:
        """Why this match cannot take a pair vote now, or None."""
        if self.single:
            return "one answer takes a thumb up or down, not a pair vote"
        if self.voted:
            return f"this pair already has its vote ({VOTE_LABELS[self.voted]}); generate again for a new pair"
        if self.rated:
            return ("an answer of this pair already has its thumb vote, and each answer takes one vote; "
                    "rate the other answer, or generate again")
        return self._unfinished()

    def rating_refusal(self, side: str) -> str | None:
        """Why answer `side` cannot take a thumb now, or None."""
        if side not in self.picks:
            return "there is no answer B in single mode"
        if self.voted:
            return f"this pair already has its vote ({VOTE_LABELS[self.voted]}), which judged both answers"
        if side in self.rated:
            return (f"answer {side.upper()} already has its vote ({RATING_LABELS[self.rated[side]].lower()}); "
                    "generate again for new answers")
        return self._unfinished()

    def record(self, choice: str) -> dict:
        """The pair vote's record; marks the match voted (identities revealed)."""
        refusal = self.vote_refusal()
        if refusal:
            raise UserError(refusal)
        rec = make_record(self.prompt, self.answers["a"], self.answers["b"], choice, self.models["a"],
                          self.models["b"], self.settings, template=self.template, model_input=self.model_input,
                          input_text=self.input_text, mode=self.mode)
        self.voted = choice
        return rec

    def rate(self, side: str, rating: str) -> dict:
        """A thumb on one answer as a record; marks that answer rated."""
        refusal = self.rating_refusal(side)
        if refusal:
            raise UserError(refusal)
        rec = make_rating(self.prompt, self.answers[side], rating, self.models[side], self.settings,
                          template=self.template, model_input=self.model_input, input_text=self.input_text,
                          mode=self.mode, side=side)
        self.rated[side] = rating
        return rec


def no_match_refusal() -> str:
    return "generate an answer first; then vote on it"
