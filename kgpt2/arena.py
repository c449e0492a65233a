"""One comparison on the demo page and the rules of voting on it, as in Chatbot Arena.

A `Match` is two picked models answering one prompt. In arena mode their
sides are drawn at random and shown as "Model A" / "Model B" until the vote;
in named mode the left picker is A. A match takes one vote, and none when
the generation failed or was stopped (nobody saw two whole answers); the
vote reveals the identities and becomes a kgpt2.votes record.

    >>> import random
    >>> m = Match.draw(("sft", "ckpt-40"), ("dpo", "ckpt-12"), arena=True, rng=random.Random(0))
    >>> sorted([m.models["a"], m.models["b"]])
    ['dpo/ckpt-12', 'sft/ckpt-40']
    >>> m.vote_refusal() is None
    False
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kgpt2.errors import UserError
from kgpt2.votes import make_record

SIDES = ("a", "b")
VOTE_LABELS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}


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
    finished: bool = False  # both answers complete
    failure: str = ""  # why it did not finish (an error, or Stop)
    voted: str = ""  # the choice, once voted
    home: str = ""  # the run whose votes.jsonl takes the vote

    @classmethod
    def draw(cls, left: tuple, right: tuple, arena: bool, rng: random.Random | None = None) -> "Match":
        """A match of the two picks; in arena mode which one is A is a coin toss."""
        if arena and (rng or random).random() < 0.5:
            left, right = right, left
        picks = {"a": tuple(left), "b": tuple(right)}
        return cls(picks, arena, models={s: f"{r}/{c}" for s, (r, c) in picks.items()})

    def label(self, side: str) -> str:
        """What the page shows about a side: its identity, or nothing yet in arena mode."""
        name = f"Model {side.upper()}"
        if self.arena and not self.voted:
            return f"**{name}**: hidden until you vote"
        info = self.infos.get(side)
        return f"**{name}**: `{self.models[side]}`" + (f" · {info}" if info else "")

    def vote_refusal(self) -> str | None:
        """Why this match cannot take a vote now, or None."""
        if self.voted:
            return (f"this pair already has its vote ({VOTE_LABELS[self.voted]}); generate again for a new pair")
        if self.failure:
            return f"the last generation did not finish ({self.failure}); generate again before voting"
        if not self.finished:
            return "the answers are not finished yet; wait for both, then vote"
        return None

    def record(self, choice: str) -> dict:
        """The vote record; marks the match voted (identities revealed)."""
        refusal = self.vote_refusal()
        if refusal:
            raise UserError(refusal)
        rec = make_record(self.prompt, self.answers["a"], self.answers["b"], choice, self.models["a"],
                          self.models["b"], self.settings, template=self.template, model_input=self.model_input,
                          input_text=self.input_text, mode="arena" if self.arena else "named")
        self.voted = choice
        return rec


def no_match_refusal() -> str:
    return "generate two answers first; then vote on them"
