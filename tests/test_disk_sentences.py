"""A full disk or a link loop met by export, a run's preset copy and prepare: one sentence, exit 2, nothing left."""

import shutil

import pytest
import safetensors.numpy
from safetensors import SafetensorError

from kgpt2.errors import UserError
from kgpt2.run import Run

pytestmark = pytest.mark.backend  # the export test trains and writes a model

FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def _full_disk_on(monkeypatch, name: str) -> None:
    """safetensors' save_file (what keras-hub's exporter and the PEFT writer call) fails on files named `name`."""
    real = safetensors.numpy.save_file

    def save_file(tensors, filename, *args, **kwargs):
        if filename.endswith(name):
            raise SafetensorError(FULL)
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.numpy, "save_file", save_file)


def _one_sentence(result, *words) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kgpt2: error: "), result.stderr
    assert "Traceback" not in result.stderr and all(w in lines[0] for w in words), lines[0]


def test_export_to_hf_on_a_full_disk_is_one_sentence(tiny_run, tmp_path, kgpt2_cli, monkeypatch):
    _full_disk_on(monkeypatch, "model.safetensors")
    result = kgpt2_cli("export", "--run", tiny_run, "--to", "hf", "out", cwd=tmp_path)
    _one_sentence(result, "the disk is full", "free some space")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no out, no temp folder


def test_export_to_peft_on_a_full_disk_is_one_sentence(tiny_preset, pydoc_shards, make_tiny_config, tmp_path,
                                                       kgpt2_cli, monkeypatch):
    from kgpt2.train import train

    cfg = make_tiny_config(tmp_path / "runs", tiny_preset, pydoc_shards, "run=lora", "lora.enabled=true",
                           "train.stages=[2]", "train.max_steps=1", "train.eval_batches=1")
    train(cfg, verbose=0)
    _full_disk_on(monkeypatch, "adapter_model.safetensors")  # the base is written, the adapter is not
    result = kgpt2_cli("export", "--run", cfg.run_dir, "--to", "peft", tmp_path / "out", cwd=tmp_path)
    _one_sentence(result, "the disk is full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


@pytest.mark.parametrize("why, words", [
    ("[Errno 28] No space left on device: '{dst}'", ["the disk is full; free some space"]),
    ("`{dst}` is a named pipe", ["is a named pipe"]),
])
def test_a_preset_copy_that_fails_is_one_sentence(tmp_path, monkeypatch, why, words):
    preset = tmp_path / "preset1k"
    preset.mkdir()
    (preset / "model.weights.h5").write_bytes(b"weights")
    (preset / "config.json").write_text("{}")

    def copytree(src, dst, *args, **kwargs):
        entries = [(str(src / n), str(dst / n), why.format(dst=dst / n)) for n in ("model.weights.h5", "config.json")]
        raise shutil.Error(entries)

    monkeypatch.setattr("kgpt2.run.shutil.copytree", copytree)
    run = Run(tmp_path / "run")
    with pytest.raises(UserError) as caught:
        run._copy_in(preset, run.preset_dir)
    message = str(caught.value)
    assert "\n" not in message and "[(" not in message and "None" not in message, message
    assert all(w in message for w in words), message
    assert sorted(p.name for p in run.path.iterdir()) == []  # no preset, no temp folder


@pytest.mark.parametrize("links", [{"loop1": "loop1"}, {"loop1": "loop2", "loop2": "loop1"}])
def test_prepare_into_a_symlink_loop_is_one_sentence(tmp_path, kgpt2_cli, links):
    (tmp_path / "x.txt").write_text("Hello world. " * 20)
    (tmp_path / "bad").mkdir()
    for name, target in links.items():
        (tmp_path / "bad" / name).symlink_to(target)
    result = kgpt2_cli("prepare", "--source", "x.txt", "--out", "bad/loop1", cwd=tmp_path)
    _one_sentence(result, "is a symbolic link loop")
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == sorted(links)
