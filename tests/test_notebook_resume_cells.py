"""A Colab user after a disconnect: each notebook's "Resume after a disconnect" cell, run after only the cells
its text names (install and Drive here; the GPU check adds nothing it needs), finds the run from ROOT alone, shows
what `kgpt2 train` prints in the cell, and stops it cleanly when the cell is interrupted.

Colab's kernel (ipykernel 5) shows only what Python prints, not what a child process writes to the file
descriptors it inherits, so the cells are run with `sys.stdout` as such a kernel has it, and a stand-in for
`python -m kgpt2.cli` (a shell script as `sys.executable`) that writes to its stderr as kgpt2 does.
"""

from __future__ import annotations

import io
import signal
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_neutral  # notebook cells and a child process; no model

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
RUNS = {"01_quickstart": "quickstart", "02_pubmed_staged_finetune": "pubmed-lora", "03_alpaca_lora": "alpaca",
        "04_shakespeare_from_scratch": "shakespeare-char", "05_dpo_from_demo_votes": "alpaca"}  # each notebook's run
FAILS = '#!/bin/sh\necho "kgpt2: error: the child got $*" >&2\nexit 2\n'
# Trains until SIGINT, then says what is kept and exits 130, as `kgpt2 train` does on Ctrl-C.
TRAINS = ('#!/bin/sh\ntrap \'echo "kgpt2: interrupted; ckpt-40 is kept" >&2; exit 130\' INT\n'
          'echo "kgpt2: stage-1/1, epoch 1/1: steps 1..50 of 300" >&2\nwhile :; do sleep 0.05; done\n')


def _resume_after_disconnect(stem: str, tmp_path: Path, monkeypatch, child: str) -> tuple[dict, io.StringIO]:
    """Run the install and Drive cells, then return (namespace, cell output) for the resume cell to run in."""
    import nbformat

    cells = [c.source for c in nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4).cells if c.cell_type == "code"]
    drive = next(i for i, s in enumerate(cells) if "drive.mount" in s)
    fake = tmp_path / "python"
    fake.write_text(child)
    fake.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KGPT2_SMOKE", raising=False)
    monkeypatch.setattr(sys, "executable", str(fake))
    namespace: dict = {"__name__": "__main__"}
    for source in (cells[0], cells[drive]):
        exec(source, namespace)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)  # what the cell shows: Python's prints, not the child's file descriptors
    return namespace, out


def _resume_cell(stem: str) -> str:
    import nbformat

    cells = nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4).cells
    return next(c.source for c in cells if c.cell_type == "code" and '"train", "--run"' in c.source)


@pytest.mark.parametrize("stem", sorted(RUNS))
def test_resume_cell_finds_the_run_and_shows_why_it_stopped(stem, tmp_path, monkeypatch):
    namespace, out = _resume_after_disconnect(stem, tmp_path, monkeypatch, FAILS)
    with pytest.raises(RuntimeError, match="exit status 2"):
        exec(_resume_cell(stem), namespace)
    run_dir = Path("checkpoints") / RUNS[stem]
    assert f"kgpt2: error: the child got -m kgpt2.cli train --run {run_dir}\n" in out.getvalue()


@pytest.mark.parametrize("stem", sorted(RUNS))
def test_interrupting_the_resume_cell_stops_kgpt2_and_shows_what_is_kept(stem, tmp_path, monkeypatch):
    namespace, out = _resume_after_disconnect(stem, tmp_path, monkeypatch, TRAINS)

    def stop_button(*_):  # what the kernel does when the cell is interrupted
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, stop_button)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            exec(_resume_cell(stem), namespace)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert "steps 1..50 of 300" in out.getvalue() and "ckpt-40 is kept" in out.getvalue()
    assert namespace["proc"].returncode == 130  # stopped by the interrupt, not left training
