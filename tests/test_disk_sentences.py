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
    # the export's note that the tiny run's max_length 100 is cut to its 64-token context comes before the failure
    lines = [line for line in result.stderr.strip().splitlines()
             if not line.startswith("kgpt2: generation_config.json: max_length")]
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


@pytest.fixture(params=[{"loop1": "loop1"}, {"loop1": "loop2", "loop2": "loop1"}], ids=["self", "pair"])
def link_loop(request, tmp_path) -> dict:
    """A source x.txt, and bad/loop1: a symbolic link to itself, or to a link back to it. Returns the links."""
    (tmp_path / "x.txt").write_text("Hello world. " * 20)
    (tmp_path / "bad").mkdir()
    for name, target in request.param.items():
        (tmp_path / "bad" / name).symlink_to(target)
    return request.param


def test_prepare_into_a_symlink_loop_is_one_sentence(tmp_path, kgpt2_cli, link_loop):
    result = kgpt2_cli("prepare", "--source", "x.txt", "--out", "bad/loop1", cwd=tmp_path)
    _one_sentence(result, "is a symbolic link loop")
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == sorted(link_loop)


def test_prepare_from_python_into_a_symlink_loop_is_the_same_sentence(tmp_path, pydoc_tokenizer, link_loop):
    """kgpt2.data.shards.prepare resolved --out again after the check and raised Python's RuntimeError / OSError."""
    from kgpt2.data.shards import prepare

    with pytest.raises(UserError) as caught:
        prepare(tmp_path / "x.txt", tmp_path / "bad" / "loop1", pydoc_tokenizer, progress=False)
    assert str(caught.value) == (f"--out '{tmp_path / 'bad' / 'loop1'}' is a symbolic link loop; "
                                 "name a new folder for the shards")
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == sorted(link_loop)


@pytest.fixture
def small_disk(tmpfs):
    """A 64 KB tmpfs (root only): a real full disk."""
    return tmpfs("disk", "64k")


def _init(kgpt2_cli, out, cwd, tokenizer_dir, overrides):
    return kgpt2_cli("pretrain", "init", "model.preset=scratch", f"model.tokenizer={tokenizer_dir}",
                     "model.vocabulary_size=0", *overrides, "--out", out, cwd=cwd)


def test_pretrain_init_on_a_full_disk_is_refused_before_h5py_writes(small_disk, tmp_path, kgpt2_cli,
                                                                    pydoc_tokenizer_dir, tiny_overrides):
    """h5py meeting this disk printed HDF5's multi-line text, or crashed the process (a segfault, temp folder left)."""
    result = _init(kgpt2_cli, small_disk / "p", tmp_path, pydoc_tokenizer_dir, tiny_overrides)
    _one_sentence(result, f"could not write the preset to '{small_disk / 'p'}': the disk is full (",
                  "bytes free, the preset needs about", "); free some space or use a bigger disk")
    assert list(small_disk.iterdir()) == []  # no half-written preset, no temp folder


HDF5_FULL = ("Can't synchronously write data (file write failed: time = Thu Dec  3 15:52:21 2026\n, filename = "
             "'/x/.p.tmp-bppycu5p/model.weights.h5', file descriptor = 3, errno = 28, error message = 'No space left "
             "on device', buf = 0x5572cf2ddd40, total write size = 12573680, bytes this sub-write = 12573680, "
             "offset = 303104)")


def test_hdf5s_own_full_disk_text_becomes_the_one_sentence(tmp_path, kgpt2_cli, pydoc_tokenizer_dir, tiny_overrides,
                                                          monkeypatch):
    """A disk that fills while h5py writes (another process writing too): HDF5 says errno = 28 in its own words."""
    def save_preset(backbone, tokenizer, folder):
        raise OSError(HDF5_FULL)  # what h5py raises: an OSError without an errno

    monkeypatch.setattr("kgpt2.model.scratch.save_preset", save_preset)
    result = _init(kgpt2_cli, tmp_path / "p", tmp_path, pydoc_tokenizer_dir, tiny_overrides)
    assert (result.returncode, result.stderr) == (2, f"kgpt2: error: could not write the preset to '{tmp_path / 'p'}'"
                                                     ": the disk is full; free some space or use a bigger disk\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_space_said_to_be_needed_is_the_space_checked(tmp_path, monkeypatch):
    """A checkpoint of 4,000,000 bytes on a disk with 5,000,000 free was refused "needing about 4,000,000"
    (5% and 1 MiB more were checked): the message contradicted itself."""
    from collections import namedtuple

    import numpy as np

    from kgpt2.training.checkpoints import CheckpointManager

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5_000_000, 5_000_000))
    weights = [np.zeros(1_000_000, np.float32)]  # 4,000,000 bytes
    monkeypatch.setattr("kgpt2.training.checkpoints.checkpoint_variables", lambda model: weights)
    with pytest.raises(OSError) as caught:
        CheckpointManager(tmp_path)._check_room(None, None, export=False)
    assert caught.value.strerror == ("No space left on device (5,000,000 bytes free, the checkpoint needs about "
                                     f"{4_200_000 + (1 << 20):,})")
    weights[0] = np.zeros(925_000, np.float32)  # 3,700,000 bytes: with 5% and 1 MiB, 4,933,576 fit in 5,000,000
    CheckpointManager(tmp_path)._check_room(None, None, export=False)
