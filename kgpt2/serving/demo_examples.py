"""Example prompts for the demo, taken from the run's own held-out data.

For an instruction run, the instructions of its first validation (or test)
records; for a chat run, their first user turns (what the chat template wraps,
without its headers); otherwise the first words of its first documents there,
so the examples are the kind of text the model was tuned on, and not text it
trained on (shards without a held-out split: their training data's first
documents). No shards (moved, deleted): no examples. `run_examples` says which
split they came from, and the page's label says so (`Examples.label`); the
prompt box's placeholder fits the run's template (`placeholder`).

    >>> from kgpt2.serving.demo_examples import Examples, example_from_text, placeholder
    >>> example_from_text("### Instruction:\\nName a colour.\\n\\n### Response:\\nBlue.")
    'Name a colour.'
    >>> example_from_text("The assert statement is a debugging aid that tests a condition.", words=3)
    'The assert statement'
    >>> example_from_text("Attribute references\\n********************\\nAn attribute reference is a primary")
    'Attribute references An attribute reference is'
    >>> example_from_text("<|system|>\\nBe brief.\\n<|user|>\\nName a colour.\\n<|assistant|>\\nBlue.")
    'Name a colour.'
    >>> Examples(["The with statement"], "train").label
    "Examples from the run's training data (its shards have no held-out split)"
    >>> placeholder("chat", ["Name a colour."])
    'A message to the model (your turn in the chat), e.g. Name a colour.'
"""

from __future__ import annotations

import logging
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from kgpt2.data.shards import ShardSet
from kgpt2.errors import UserError
from kgpt2.generation.templates import INPUT, INSTRUCTION, RESPONSE, ROLES, chat_header
from kgpt2.model.models import load_tokenizer
from kgpt2.run import load_run_config

log = logging.getLogger("kgpt2")
USER = chat_header("user")
# A chat turn ends at the next turn's header (the end-of-text id between them decodes to nothing) or the text's end.
TURN_END = re.compile("|".join(re.escape("\n" + chat_header(role)) for role in ROLES) + "|<\\|endoftext\\|>")


def is_adornment(line: str) -> bool:
    """A reStructuredText heading's underline or overline ("*****", "====="): one punctuation mark repeated."""
    line = line.strip()
    return len(line) >= 3 and len(set(line)) == 1 and line[0] in string.punctuation


def example_from_text(text: str, words: int = 6) -> str:
    if text.startswith(INSTRUCTION):
        return text[len(INSTRUCTION):].split(INPUT)[0].split(RESPONSE)[0].strip()
    if text.startswith("<|") and USER in text:  # a chat: its headers and a system turn were the chip
        return TURN_END.split(text.split(USER, 1)[1])[0].strip()
    # The pydoc topics are reStructuredText: a chip read "Attribute references ******************** An ...".
    text = "\n".join(line for line in text.splitlines() if not is_adornment(line))
    return " ".join(text.split()[:words])


SPLITS = ("validation", "test", "train")  # held-out first: text the model did not train on
LABELS = {"validation": "Examples from the run's held-out data (its validation split)",
          "test": "Examples from the run's held-out data (its test split)",
          "train": "Examples from the run's training data (its shards have no held-out split)"}
# What the prompt box takes, by the run's template (its [generate] template: chat and instruction runs set theirs).
PROMPT_KINDS = {"plain": "The start of a text for the model to continue",
                "instruction": "An instruction for the model",
                "chat": "A message to the model (your turn in the chat)"}


@dataclass(frozen=True)
class Examples:
    """Example prompts and the split of the run's shards they came from (None: the run gave none)."""

    texts: list[str] = field(default_factory=list)
    source: str | None = None

    @property
    def label(self) -> str:
        return LABELS.get(self.source, "Examples")


def placeholder(template: str, examples: list[str]) -> str:
    """The prompt box's grey text: what a prompt is for this run's template, with its first example if any."""
    kind = PROMPT_KINDS.get(template, PROMPT_KINDS["plain"])
    return f"{kind}, e.g. {examples[0][:80]}" if examples else kind


def run_examples(run_dir, n: int = 4) -> Examples:
    """Up to `n` example prompts from the first split of the run's shards that holds articles, held-out first."""
    try:
        cfg = load_run_config(run_dir)
        shards = ShardSet(Path(cfg.data.shards))
        counts = {name: info.get("num_articles", 0) for name, info in shards.manifest["splits"].items()}
        source = next(s for s in SPLITS if counts.get(s))  # an empty validation split (--splits train) gave none
        split = shards.split(source)
        tokenizer = load_tokenizer(cfg.model)
    except (UserError, OSError, StopIteration, KeyError) as e:
        log.info("demo: no examples from the run's data (%s)", e)
        return Examples()
    found = []
    for i in range(split.num_articles):
        text = example_from_text(tokenizer.decode(split.article_tokens(i)[:96]))
        if text and text not in found:
            found.append(text[:300])
        if len(found) == n:
            break
    return Examples(found, source if found else None)
