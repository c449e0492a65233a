"""`kgpt2 generate --stream` says what it says before the text, not inside it.

Found on a student's journey from the built wheel, in a terminal (stdout and stderr on one screen): with the
recipe's `max_length = 100` on a 64-token model, `--stream` printed the prompt, then the line that the context
caps the length, then the text: "The patientskgpt2: max length 100 asked ...". A prompt too long for the context
alike printed the prompt, then the error. `Generator.stream` now checks and plans the request when called.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from kgpt2.errors import UserError
from kgpt2.generate import Generator, Settings

pytestmark = pytest.mark.backend

PROMPT = "The assert statement"


def test_stream_checks_the_request_when_called(loaded, caplog):
    model, tokenizer, cfg = loaded
    g = Generator(model, tokenizer)
    context = cfg.model.max_sequence_length
    with pytest.raises(UserError, match=r"the prompt is \d+ tokens; it must be shorter than"):
        g.stream("word " * (2 * context), Settings(sampler="greedy"))  # not iterated: the call itself refuses
    with caplog.at_level("INFO", logger="kgpt2"):
        pieces = g.stream(PROMPT, Settings(sampler="greedy", max_length=2 * context))
        assert "max length" in caplog.text  # said before any piece is asked for
    assert "".join(pieces) == g.generate(PROMPT, Settings(sampler="greedy", max_length=2 * context))


def test_the_cli_says_the_cap_before_the_prompt(tiny_run, tmp_path):
    done = subprocess.run([sys.executable, "-m", "kgpt2.cli", "generate", "--run", str(tiny_run), "--prompt", PROMPT,
                           "--stream", "--sampler", "greedy", "--max-length", "1000"], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    note = [i for i, line in enumerate(lines) if line.startswith("kgpt2: max length 1000 asked")]
    assert note, done.stdout
    text = "\n".join(lines[note[0] + 1:])  # after the note on its own line: the prompt and its continuation alone
    assert text.startswith(PROMPT) and "kgpt2:" not in text, done.stdout
