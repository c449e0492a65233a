"""`kgpt2 export` of a LoRA run on an int8 or int4 base says that the base was dequantised and how closely the
export matches the run, measured at export time; the numbers are checked against transformers (and PEFT) loading
the export. docs/interop.md says an int4 export is exact up to float rounding (Keras's int4 layers compute with the
dequantised kernel and a float input); an int8 one differs by the int8 layers' input rounding.

Also the run's `[generate]` settings reaching the exported generation_config.json, end to end (`--to peft`'s
base/, which PeftModel generates with). The tiny GPT-2 (2 layers, 32 wide, the pydoc BPE), trained 2 steps.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytestmark = pytest.mark.backend

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")



def dequantised_line(kind: str) -> re.Pattern:
    return re.compile(rf"kgpt2: the run's {kind} base was dequantised to float32 \(there is no {kind} export format\): "
                      r"on a fixed text of (\d+) tokens its logits differ from the run's by at most ([0-9.e-]+) "
                      r"\(([0-9.e-]+)% of the run's largest logit\) and its most likely next token is the run's at "
                      r"(\d+) of (\d+) positions")


LINE = dequantised_line("int8")
ROUNDING = 1e-5  # float32 rounding of logits of size ~1, summed over the tiny model's few products


def quantised_run(folder, kind: str, tiny_preset, pydoc_shards, make_tiny_config, *settings: str):
    """A LoRA run on a `kind` base, 2 steps at a large learning rate so the adapters are far from zero."""
    from kgpt2.train import train

    cfg = make_tiny_config(folder, tiny_preset, pydoc_shards, f"run={kind}", f"model.quantize={kind}",
                           "lora.enabled=true", 'lora.targets=["query", "key", "value", "attention_output"]',
                           "train.learning_rate=0.05", "train.stages=[4]", "train.max_steps=2", "train.eval_batches=1",
                           *settings)
    train(cfg, verbose=0)
    return cfg.run_dir


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, tiny_preset, pydoc_shards, make_tiny_config):
    return quantised_run(tmp_path_factory.mktemp("q8"), "int8", tiny_preset, pydoc_shards, make_tiny_config,
                         "generate.sampler=top_k", "generate.top_k=7", "generate.temperature=0.6",
                         "generate.max_new_tokens=33")


def test_int8_export_says_it_was_dequantised_and_how_close_it_is(int8_run, tmp_path, kgpt2_cli):
    """The export printed what a float export prints; only kgpt2_export.json said "dequantised_from": "int8",
    and a tester measured 1.16% of the logits' range against docs' "within 1%"."""
    from kgpt2.model.quantize import probe_ids
    from kgpt2.run import load_model

    done = kgpt2_cli("export", "--run", int8_run, "--to", "hf", "hf", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = [m for m in map(LINE.fullmatch, done.stderr.strip().splitlines()) if m]
    assert len(found) == 1, done.stderr
    positions, diff, percent, agree, of = found[0].groups()
    model, tokenizer, _ = load_model(int8_run)
    ids = probe_ids(tokenizer, tokenizer.vocab_size, 64)
    assert int(positions) == int(of) == len(ids) > 10  # the fixed text, not a token or two
    run = np.asarray(model({"token_ids": ids[None], "padding_mask": np.ones((1, len(ids)), bool)}))[0]
    run = run[:, :tokenizer.vocab_size]
    with torch.no_grad():  # the export as transformers computes it
        exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
        theirs = exported(torch.tensor(ids[None], dtype=torch.long)).logits[0].numpy()
    measured = np.abs(theirs - run).max()
    assert measured > 1e-4  # the int8 layers' input rounding: a real difference to report
    assert float(diff) == pytest.approx(measured, rel=0.05, abs=2e-5)  # 2 significant digits
    assert float(percent) == pytest.approx(100 * measured / np.abs(run).max(), abs=0.06)
    assert int(agree) == int((theirs.argmax(-1) == run.argmax(-1)).sum())
    saved = json.loads((tmp_path / "hf" / "kgpt2_export.json").read_text())
    assert saved["dequantised_from"] == "int8"
    assert saved["dequantised_check"]["max_logit_difference"] == pytest.approx(measured, rel=1e-3, abs=2e-5)


def test_peft_export_of_an_int8_run_says_it_too_and_carries_the_sampler(int8_run, tmp_path, kgpt2_cli):
    done = kgpt2_cli("-q", "export", "--run", int8_run, "--to", "peft", "peft", cwd=tmp_path)
    assert done.returncode == 0 and "dequantised" not in done.stderr, done.stderr  # -q: results only
    done = kgpt2_cli("export", "--run", int8_run, "--to", "peft", "peft2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sum(bool(LINE.fullmatch(line)) for line in done.stderr.strip().splitlines()) == 1, done.stderr
    # PeftModel generates with its base's generation config: the run's sampler, not greedy with 20 new tokens
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "peft" / "base").generation_config
    assert (loaded.do_sample, loaded.top_k, loaded.top_p, loaded.temperature, loaded.max_new_tokens) == \
        (True, 7, 1.0, pytest.approx(0.6), 33)


def test_export_help_says_there_is_no_int8_format(kgpt2_cli):
    done = kgpt2_cli("export", "--help")
    assert done.returncode == 0 and "no int8 export format" in " ".join(done.stdout.split())


INT4_LINE = dequantised_line("int4")


@pytest.fixture(scope="module")
def int4_run(tmp_path_factory, tiny_preset, pydoc_shards, make_tiny_config):
    return quantised_run(tmp_path_factory.mktemp("q4"), "int4", tiny_preset, pydoc_shards, make_tiny_config)


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
    found = [m for m in map(INT4_LINE.fullmatch, stderr.strip().splitlines()) if m]
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
