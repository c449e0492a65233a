"""`kgpt2 evaluate` on a read-only run folder: the scores, then one warning that its files were not saved, exit 0.

It printed the table, then failed (exit 2, "use a writable folder") though the evaluation itself had succeeded.
A real read-only folder: chmod for a user; root ignores chmod, so there a read-only bind mount (skipped where
mounting is not allowed).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.backend


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def read_only_run(unevaluated_run, read_only, tmp_path):
    """A copy of the tiny run without evaluation tables, made read-only (a name with a space, as on Drive)."""
    return read_only(unevaluated_run.rename(tmp_path / "shared run"))


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


def test_a_full_disk_is_still_an_error(unevaluated_run, monkeypatch, kgpt2_cli):
    """Only a folder that may not be written is a warning: a full disk says so and exits 2, as before."""
    import errno

    from kgpt2 import io

    run = unevaluated_run

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(io, "_fsynced_temp", full)
    r = kgpt2_cli("evaluate", "--run", str(run), "--split", "validation", "--max-batches", "1")
    assert r.returncode == 2 and "the disk is full" in r.stderr and "perplexity" in r.stdout
