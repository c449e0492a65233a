"""A run's tokenizer files changed after it trained (a merges.txt cut short at a line by an interrupted copy to
Drive, a vocabulary replaced): prompts became other tokens than the model learnt, and generate, evaluate, export,
serve and the demo answered without a word. Its checkpoints record the tokenizer's hash: every reader compares."""

import shutil

import pytest

pytestmark = pytest.mark.backend_neutral  # a refusal before any weights are read


def test_a_run_whose_tokenizer_files_changed_is_refused_by_every_reader(kgpt2_cli, tiny_run, tmp_path):
    run = tmp_path / "copied"
    shutil.copytree(tiny_run, run)
    merges = run / "preset" / "assets" / "tokenizer" / "merges.txt"
    whole = merges.read_bytes()
    lines = whole.splitlines(keepends=True)
    merges.write_bytes(b"".join(lines[: len(lines) // 2]))  # still a valid merges.txt, of fewer merges
    generate = ["generate", "--run", run, "--prompt", "The", "--max-new-tokens", "2"]
    for argv in (generate, ["evaluate", "--run", run], ["export", "--run", run, "--to", "hf", "--out", "hf"],
                 ["train", "--run", run, "train.epochs=2"]):
        result = kgpt2_cli(*argv, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        (error,) = [line for line in result.stderr.splitlines() if line.startswith("kgpt2: error:")]
        assert "was trained with another tokenizer" in error and f"model.preset '{run / 'preset'}'" in error, error
    assert not (tmp_path / "hf").exists()
    from kgpt2.errors import UserError
    from kgpt2.serving.model_pool import ModelPool

    with pytest.raises(UserError, match="was trained with another tokenizer"):  # what serve and the demo load with
        ModelPool(tmp_path).get("copied", "latest")
    merges.write_bytes(whole)  # the run's own files back: it answers again
    assert kgpt2_cli(*generate, cwd=tmp_path).returncode == 0
