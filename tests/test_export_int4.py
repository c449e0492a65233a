"""`kgpt2 export` of a LoRA run on an int4 base (QLoRA the Keras way): docs/interop.md says such an export is exact
up to float rounding (Keras's int4 layers compute with the dequantised kernel and a float input). The oracle is
transformers (and PEFT) loading the export, against the run's own forward pass on the same ids; the line the export
prints about the dequantisation is checked against the same numbers. The tiny GPT-2 (2 layers, 32 wide, the pydoc
BPE), trained 2 steps with a large learning rate so the adapters are far from zero.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytestmark = pytest.mark.backend

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LINE = re.compile(r"kgpt2: the run's int4 base was dequantised to float32 \(there is no int4 export format\): on a "
                  r"fixed text of (\d+) tokens its logits differ from the run's by at most ([0-9.e-]+) \(([0-9.e-]+)% "
                  r"of the run's largest logit\) and its most likely next token is the run's at (\d+) of (\d+) "
                  r"positions")
ROUNDING = 1e-5  # float32 rounding of logits of size ~1, summed over the tiny model's few products


@pytest.fixture(scope="module")
def int4_run(tmp_path_factory, tiny_preset, pydoc_shards, make_tiny_config):
    from kgpt2.train import train

    cfg = make_tiny_config(tmp_path_factory.mktemp("q4"), tiny_preset, pydoc_shards, "run=q4", "model.quantize=int4",
                           "lora.enabled=true", 'lora.targets=["query", "key", "value", "attention_output"]',
                           "train.learning_rate=0.05", "train.stages=[4]", "train.max_steps=2", "train.eval_batches=1")
    train(cfg, verbose=0)
    return cfg.run_dir


@pytest.fixture(scope="module")
def run_logits(int4_run):
    """The probe ids the export measures on, and the run's own logits for them (vocabulary padding cut off)."""
    from kgpt2.model.quantize import probe_ids
    from kgpt2.run import load_model

    model, tokenizer, _ = load_model(int4_run)
    ids = probe_ids(tokenizer, tokenizer.vocab_size, 64)
    assert len(ids) > 10  # the fixed text, not a token or two
    logits = np.asarray(model({"token_ids": ids[None], "padding_mask": np.ones((1, len(ids)), bool)}))[0]
    return ids, logits[:, :tokenizer.vocab_size]


def the_line(stderr: str) -> tuple:
    found = [m for m in map(LINE.fullmatch, stderr.strip().splitlines()) if m]
    assert len(found) == 1, stderr
    positions, diff, percent, agree, of = found[0].groups()
    return int(positions), float(diff), float(percent), int(agree), int(of)


def transformers_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.tensor(ids[None], dtype=torch.long)).logits[0].numpy()


def test_int4_hf_export_is_the_run_up_to_float_rounding(int4_run, run_logits, tmp_path, kgpt2_cli):
    ids, run = run_logits
    done = kgpt2_cli("export", "--run", int4_run, "--to", "hf", "hf", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    theirs = transformers_logits(transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf"), ids)
    measured = np.abs(theirs - run).max()
    assert np.abs(run).max() > 0.1 and measured < ROUNDING, measured  # exact up to float rounding
    assert (theirs.argmax(-1) == run.argmax(-1)).all()
    positions, diff, percent, agree, of = the_line(done.stderr)  # what the export says is what transformers sees
    assert positions == of == agree == len(ids)
    assert diff < ROUNDING and percent < 0.01
    saved = json.loads((tmp_path / "hf" / "kgpt2_export.json").read_text())
    assert saved["dequantised_from"] == "int4" and saved["lora_merged"] is True
    assert saved["dequantised_check"]["max_logit_difference"] < ROUNDING


def test_int4_peft_export_on_its_base_is_the_run_up_to_float_rounding(int4_run, run_logits, tmp_path, kgpt2_cli):
    peft = pytest.importorskip("peft")
    ids, run = run_logits
    done = kgpt2_cli("export", "--run", int4_run, "--to", "peft", "peft", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    base = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "peft" / "base")
    theirs = transformers_logits(peft.PeftModel.from_pretrained(base, tmp_path / "peft"), ids)
    assert np.abs(theirs - run).max() < ROUNDING
    positions, diff, _, agree, _ = the_line(done.stderr)
    assert positions == agree == len(ids) and diff < ROUNDING
