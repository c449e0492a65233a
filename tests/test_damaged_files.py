"""Damaged files a user hands kgpt2 (a PNG renamed to a tokenizer, state.json or manifest.json; a truncated or
edited offsets file) get one sentence and exit 2, or are skipped with one line, never a traceback."""

import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.backend_neutral  # refusals of damaged files; the numerics are tested on both elsewhere

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))  # not UTF-8, not JSON


def _one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kgpt2: error: "), result.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def shards(pydoc_shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(pydoc_shards, copy)
    return copy


@pytest.fixture
def run(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


@pytest.mark.parametrize("damage", [PNG, b'{"!": 0, "\\""'], ids=["png", "truncated"])
@pytest.mark.parametrize("name", ["vocabulary.json", "encoder.json", "char_vocabulary.json"])
def test_prepare_with_a_damaged_tokenizer_file(kgpt2_cli, pydoc_tokenizer_dir, tmp_path, name, damage):
    tok = tmp_path / "tok"
    tok.mkdir()
    if name == "encoder.json":  # OpenAI's pair of names
        shutil.copy(pydoc_tokenizer_dir / "merges.txt", tok / "vocab.bpe")
    else:
        shutil.copy(pydoc_tokenizer_dir / "merges.txt", tok / "merges.txt")
    (tok / name).write_bytes(damage)
    result = kgpt2_cli("prepare", "--source", "pydoc", "--out", tmp_path / "out", "--tokenizer", tok)
    _one_line_error(result, f"tokenizer file '{tok / name}' is damaged or not a tokenizer")
    assert not (tmp_path / "out").exists()


def test_train_with_a_damaged_tokenizer_file(kgpt2_cli, pydoc_tokenizer_dir, tiny_preset, pydoc_shards,
                                             tiny_overrides, tmp_path):
    tok = tmp_path / "tok"
    shutil.copytree(pydoc_tokenizer_dir, tok)
    (tok / "vocabulary.json").write_bytes(PNG)
    result = kgpt2_cli("train", *tiny_overrides, "run=t", f"checkpoints_root={tmp_path / 'runs'}",
                       f"model.preset={tiny_preset}", f"model.tokenizer={tok}", f"data.shards={pydoc_shards}",
                       "train.stages=[2]")
    _one_line_error(result, "vocabulary.json' is damaged or not a tokenizer")


def test_a_run_whose_tokenizer_file_is_damaged(kgpt2_cli, run):
    damaged = list(run.rglob("vocabulary.json"))
    assert damaged
    for p in damaged:
        p.write_bytes(PNG)
    _one_line_error(kgpt2_cli("evaluate", "--run", run, "--max-batches", "1"), "is damaged or not a tokenizer")
    _one_line_error(kgpt2_cli("-q", "generate", "--run", run, "--prompt", "hello"),  # -q: no "loading" line
                    "is damaged or not a tokenizer")
    assert all(p.read_bytes() == PNG for p in damaged)  # left as it is


def test_a_checkpoint_whose_state_is_a_png_is_skipped(kgpt2_cli, run):
    from kgpt2.training.checkpoints import CheckpointManager

    newest = CheckpointManager(run).list()[-1]
    (newest.path / "state.json").write_bytes(PNG)
    assert newest.path not in [c.path for c in CheckpointManager(run).list()]
    result = kgpt2_cli("evaluate", "--run", run, "--max-batches", "1")
    assert result.returncode == 0, result.stderr
    assert f"checkpoint '{newest.path}' is damaged" in result.stderr
    assert "Traceback" not in result.stderr
    assert (newest.path / "state.json").read_bytes() == PNG


def test_a_shard_manifest_that_is_a_png(kgpt2_cli, run, shards):
    (shards / "manifest.json").write_bytes(PNG)
    _one_line_error(kgpt2_cli("evaluate", "--run", run, "--shards", shards), "is corrupt; run `kgpt2 prepare` again")
    _one_line_error(kgpt2_cli("train", "--run", run, f"data.shards={shards}", "train.stages=[5,10]"),
                    "is corrupt; run `kgpt2 prepare` again")
    assert (shards / "manifest.json").read_bytes() == PNG


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(min(500, path.stat().st_size - 8))


def _edit_one_value(path):
    offsets = np.load(path)
    offsets[len(offsets) // 2] = offsets[-1] + 1000  # one article ends past the next: negative lengths after
    np.save(path, offsets)


@pytest.mark.parametrize("damage", [_truncate, _edit_one_value], ids=["truncated", "edited"])
def test_a_damaged_offsets_file(kgpt2_cli, run, shards, damage):
    damage(shards / "train.offsets.npy")
    want = "has a damaged train.offsets.npy; run `kgpt2 prepare` again"
    _one_line_error(kgpt2_cli("evaluate", "--run", run, "--shards", shards, "--split", "train", "--max-batches", "1"),
                    want)
    _one_line_error(kgpt2_cli("train", "--run", run, f"data.shards={shards}", "train.stages=[5,10,10]"), want)


def test_intact_offsets_pass_the_checks(pydoc_shards):
    from kgpt2.data.shards import ShardSet

    shard_set = ShardSet(pydoc_shards)
    for name in shard_set.manifest["splits"]:
        assert shard_set.split(name).offsets[-1] == shard_set.manifest["splits"][name]["num_tokens"]
