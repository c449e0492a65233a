"""Example prompts for the demo, taken from the run's own held-out data.

For an instruction run, the instructions of its first validation (or test)
records; for a chat run, their first user turns (what the chat template wraps,
without its headers); otherwise the first words of its first documents there,
so the examples are the kind of text the model was tuned on, and not text it
trained on (shards without a held-out split: their training data's first
documents). No shards (moved, deleted): no examples.

    >>> from kgpt2.serving.demo_examples import example_from_text
    >>> example_from_text("### Instruction:\\nName a colour.\\n\\n### Response:\\nBlue.")
    'Name a colour.'
    >>> example_from_text("The assert statement is a debugging aid that tests a condition.", words=3)
    'The assert statement'
    >>> example_from_text("Attribute references\\n********************\\nAn attribute reference is a primary")
    'Attribute references An attribute reference is'
    >>> example_from_text("<|system|>\\nBe brief.\\n<|user|>\\nName a colour.\\n<|assistant|>\\nBlue.")
    'Name a colour.'
"""

from __future__ import annotations

import logging
import re
import string
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


def examples_from_run(run_dir, n: int = 4) -> list[str]:
    try:
        cfg = load_run_config(run_dir)
        shards = ShardSet(Path(cfg.data.shards))
        split = next(shards.split(s) for s in ("validation", "test", "train") if s in shards.manifest["splits"])
        tokenizer = load_tokenizer(cfg.model)
    except (UserError, OSError, StopIteration, KeyError) as e:
        log.info("demo: no examples from the run's data (%s)", e)
        return []
    found = []
    for i in range(split.num_articles):
        text = example_from_text(tokenizer.decode(split.article_tokens(i)[:96]))
        if text and text not in found:
            found.append(text[:300])
        if len(found) == n:
            break
    return found
