"""`kgpt2 quickstart` as a user runs it: from any folder, into the run folder it names, and nowhere else."""

from pathlib import Path

import pytest

pytestmark = [pytest.mark.backend_neutral, pytest.mark.slow]


def _files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_quickstart_keeps_everything_in_the_run_folder_its_overrides_name(tmp_path, monkeypatch, capsys):
    """`checkpoints_root=DIR run=NAME` (the keys of every run config) put the tokenizer, preset and shards in
    DIR/NAME beside the checkpoints; before, they went to ./checkpoints/quickstart while the report said DIR/NAME."""
    from kgpt2 import smoke
    from kgpt2.cli import main

    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["-q", "quickstart", *smoke.overrides(), "checkpoints_root=runs", "run=first"]) == 0
    out = capsys.readouterr().out
    assert "made: runs/first/ (tokenizer/, preset/, shards/" in out
    assert [p.name for p in cwd.iterdir()] == ["runs"] and [p.name for p in (cwd / "runs").iterdir()] == ["first"]
    made = _files_under(cwd / "runs" / "first")
    for expected in ("tokenizer/vocabulary.json", "preset/config.json", "shards/manifest.json", "config.json",
                     "stage-3.weights.h5", "evaluation-test.csv", "loss.png"):
        assert expected in made, expected
    assert any(name.startswith("ckpt-") for name in made)
