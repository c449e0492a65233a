"""Which checkpoint `latest` is for the readers that load only the weights (generate, serve, export), what the
line about a damaged one says, and the sentence for a checkpoint folder given as a verb's --run."""

import shutil

import pytest

from kgpt2.training.checkpoints import CheckpointManager

pytestmark = pytest.mark.backend_neutral  # which checkpoint is picked and what is said: no backend difference


@pytest.fixture
def run(tiny_run, tmp_path):
    copy = tmp_path / "my run"  # a space in the path: the lines must quote it
    shutil.copytree(tiny_run, copy)
    return copy


def test_a_damaged_optimizer_state_does_not_stop_generate_serve_or_export(run, kgpt2_cli, flip_bytes):
    """generate, serve and export load no optimizer state, yet passed over a checkpoint whose optimizer.npz was
    damaged for an older one; a resume must still pass over it."""
    from kgpt2.serving.checkpoint_names import resolve

    store = CheckpointManager(run)
    newest, older = store.list()[-1], store.list()[-2]
    flip_bytes(newest.path / "optimizer.npz")
    assert resolve(run)[0] == newest.id  # what serve and export load and name
    generated = kgpt2_cli("generate", "--run", run, "--prompt", "The", "--sampler", "greedy", "--max-new-tokens", 2)
    assert generated.returncode == 0, generated.stderr
    assert "is damaged" not in generated.stderr  # newest used: nothing passed over
    assert CheckpointManager(run).latest().id == older.id  # training resumes only where the optimizer verifies


def test_the_line_about_a_damaged_checkpoint_names_the_one_used_and_quotes_its_path(run, kgpt2_cli):
    """It said "using an older one" without naming it, and showed the path (with a space) unquoted."""
    store = CheckpointManager(run)
    newest, older = store.list()[-1], store.list()[-2]
    (newest.path / "weights.npz").write_bytes((newest.path / "weights.npz").read_bytes()[:100])
    generated = kgpt2_cli("generate", "--run", run, "--prompt", "The", "--sampler", "greedy", "--max-new-tokens", 2)
    assert generated.returncode == 0, generated.stderr
    lines = [line for line in generated.stderr.splitlines() if "is damaged" in line]
    assert len(lines) == 1, generated.stderr
    assert f"checkpoint '{newest.path}' is damaged (weights.npz is 100 bytes" in lines[0]
    assert lines[0].endswith(f"; using {older.id} instead and leaving it as it is")


def test_a_checkpoint_folder_as_run_suggests_only_what_the_verb_takes(tiny_run, kgpt2_cli):
    """`pretrain summary --run RUN/ckpt-N` suggested `--checkpoint ckpt-N`, an option summary does not have."""
    ckpt = CheckpointManager(tiny_run).list()[-1]
    summary = kgpt2_cli("pretrain", "summary", "--run", ckpt.path)
    assert summary.returncode == 2 and "Traceback" not in summary.stderr
    assert summary.stderr.strip().splitlines() == [
        f"kgpt2: error: '{ckpt.path}' is a folder inside run '{tiny_run}'; --run takes the run's folder"]
    generated = kgpt2_cli("generate", "--run", ckpt.path, "--prompt", "The")  # a verb that takes --checkpoint
    assert generated.returncode == 2
    assert f"--checkpoint {ckpt.id} picks this checkpoint" in generated.stderr
