"""`kgpt2 train train.init_from=ALIGN_RUN` with another tokenizer of the same size is refused, naming the align run's.

Align runs of an older kgpt2 recorded no tokenizer hash in their checkpoints (now they do, as train's), so
kgpt2.training.continuation._check_init_tokenizer falls back to the tokenizer their config.json names (the run's own
copy of the preset); that fallback was untested. Checked
on an align run moved to another folder, from a third working directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend  # align trains the tiny model


def _aligned(tmp_path: Path, tiny_run: Path, kgpt2_cli) -> Path:
    """A 2-step DPO run from (a copy of) the tiny run, moved away from where it was aligned; the run it started from
    deleted."""
    (tmp_path / "prefs.jsonl").write_text("".join(
        json.dumps({"prompt": f"Say {i} \n", "chosen": f" {i} is a number.", "rejected": f" the with {i}"}) + "\n"
        for i in range(16)), encoding="utf-8")
    shutil.copytree(tiny_run, tmp_path / "runs" / "src")
    r = kgpt2_cli("align", "-q", "run=aligned", "checkpoints_root=runs", 'align.data=["prefs.jsonl"]',
                  "align.steps=2", "align.heldout_fraction=0.25", "train.batch_size=4", "align.init_run=runs/src",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    moved = Path(shutil.move(tmp_path / "runs" / "aligned", tmp_path / "elsewhere" / "aligned"))
    shutil.rmtree(tmp_path / "runs")
    return moved


def test_init_from_an_align_run_checks_the_tokenizer_its_config_names(tmp_path, tiny_run, tiny_preset,
                                                                        small_shards, pydoc_tokenizer,
                                                                        tiny_overrides, kgpt2_cli):
    from kgpt2.config import load_config
    from kgpt2.data.shards import prepare
    from kgpt2.model.models import load_tokenizer
    from kgpt2.model.tokenizer import Tokenizer
    from kgpt2.training.checkpoint_manifest import STATE_FILE, write_manifest
    from kgpt2.training.checkpoints import CheckpointManager
    from kgpt2.training.continuation import init_checkpoint

    aligned = _aligned(tmp_path, tiny_run, kgpt2_cli)
    newest = CheckpointManager(aligned).list()[-1]
    assert newest.state["tokenizer"] == pydoc_tokenizer.hash  # align checkpoints record it now, as train's do
    # a run aligned by an older kgpt2 recorded none: that sends the check to the fallback tested here
    state = json.loads((newest.path / STATE_FILE).read_text())
    del state["tokenizer"]
    (newest.path / STATE_FILE).write_text(json.dumps(state))
    write_manifest(newest.path)
    assert "tokenizer" not in CheckpointManager(aligned).list()[-1].state
    # the BPE with the first two merged tokens' ids exchanged: the shape check passes, two rows stand for other tokens
    corpus = small_shards.parent / "corpus"
    ids = dict(pydoc_tokenizer.vocabulary)
    first, second = sorted((t for t in ids if len(t) > 1 and t != "<|endoftext|>"), key=ids.get)[:2]
    ids[first], ids[second] = ids[second], ids[first]
    other = Tokenizer(ids, pydoc_tokenizer.merges)
    assert other.vocab_size == pydoc_tokenizer.vocab_size and other.hash != pydoc_tokenizer.hash
    folder = other.save(tmp_path / "other-tokenizer")
    prepare(str(corpus), tmp_path / "other-shards", other, progress=False)
    work = tmp_path / "work"
    work.mkdir()
    shape = ("model.num_", "model.hidden_dim", "model.intermediate_dim", "model.max_sequence_length")
    args = [o for o in tiny_overrides if not o.startswith(shape)] + [
        f"checkpoints_root={work}", f"model.preset={tiny_preset}", f"train.init_from={aligned}"]
    r = kgpt2_cli("train", *args, "run=b", f"model.tokenizer={folder}", f"data.shards={tmp_path / 'other-shards'}",
                  cwd=work)
    errors = [line for line in r.stderr.splitlines() if line.startswith("kgpt2: error:")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    own = aligned / "preset" / "assets" / "tokenizer"  # the align run's own copy of its preset's tokenizer
    assert errors[0] == (
        f"kgpt2: error: train.init_from: run '{aligned}' was trained with another tokenizer (the tokenizer of "
        f"model.preset '{aligned / 'preset'}', hash {pydoc_tokenizer.hash}) than this config's (model.tokenizer "
        f"'{folder}', hash {other.hash}), so its embeddings would stand for other tokens; train with its tokenizer "
        f"(model.tokenizer={own}) on shards prepared with it, or leave train.init_from out"), errors[0]
    assert not (work / "b").exists()
    # what it advises starts from the align run's last checkpoint
    same = load_config(None, args + ["run=c", f"model.tokenizer={own}", f"data.shards={small_shards}"])
    assert init_checkpoint(same, load_tokenizer(same.model)).id == CheckpointManager(aligned).list()[-1].id
