"""`kgpt2 evaluate` on a read-only run folder: the scores, then one warning that its files were not saved, exit 0.

It printed the table, then failed (exit 2, "use a writable folder") though the evaluation itself had succeeded.
A real read-only folder: chmod for a user; root ignores chmod, so there a read-only bind mount (skipped where
mounting is not allowed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def read_only_run(tiny_run, tmp_path):
    """A copy of the tiny run without evaluation tables, made read-only."""
    run = tmp_path / "shared run"
    shutil.copytree(tiny_run, run)
    for f in run.glob("evaluation-*"):
        f.unlink()
    if os.geteuid() != 0:
        for p in [run, *run.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        yield run
        for p in [run, *run.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        return
    done = subprocess.run(["mount", "--bind", str(run), str(run)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"root ignores chmod, and a read-only bind mount failed here: {done.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(run)], check=True, capture_output=True)
        with pytest.raises(OSError):  # really read-only, even for root
            (run / "probe").write_text("x")
        yield run
    finally:
        subprocess.run(["umount", str(run)], capture_output=True)


@pytest.mark.parametrize("as_json", [False, True])
def test_a_read_only_run_is_scored_with_one_warning_and_exit_0(read_only_run, kgpt2_cli, as_json):
    from kgpt2.evaluate import evaluate_run

    before = _tree(read_only_run)
    args = ["evaluate", "--run", str(read_only_run), "--split", "validation", "--max-batches", "1"]
    r = kgpt2_cli(*args, *(["--json"] if as_json else []))
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"kgpt2: the run folder '{read_only_run}' is read-only, so this evaluation's files (evaluation-validation.json,"
        " .csv and .png) were not saved; copy the run to a writable folder to keep them"]
    loss = evaluate_run(read_only_run, "latest", "validation", max_batches=1, save=False)[0]["loss"]
    assert (f"{loss:.4f}" in r.stdout) if not as_json else r.stdout.count('"loss"') == 1
    assert "saved:" not in r.stdout
    assert _tree(read_only_run) == before  # nothing written, nothing half-written


def test_a_full_disk_is_still_an_error(tiny_run, tmp_path, monkeypatch, kgpt2_cli):
    """Only a folder that may not be written is a warning: a full disk says so and exits 2, as before."""
    import errno

    from kgpt2 import io

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(io, "_fsynced_temp", full)
    r = kgpt2_cli("evaluate", "--run", str(run), "--split", "validation", "--max-batches", "1")
    assert r.returncode == 2 and "the disk is full" in r.stderr and "perplexity" in r.stdout
