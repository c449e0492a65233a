"""`kgpt2 export` of a LoRA run on an int8 base says that the base was dequantised and how closely the export
matches the run, measured at export time; the numbers are checked against transformers loading the export.

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

LINE = re.compile(r"kgpt2: the run's int8 base was dequantised to float32 \(there is no int8 export format\): on a "
                  r"fixed text of (\d+) tokens its logits differ from the run's by at most ([0-9.e-]+) \(([0-9.]+)% "
                  r"of the run's largest logit\) and its most likely next token is the run's at (\d+) of (\d+) "
                  r"positions")


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, tiny_preset, pydoc_shards, make_tiny_config):
    from kgpt2.train import train

    cfg = make_tiny_config(tmp_path_factory.mktemp("q8"), tiny_preset, pydoc_shards, "run=q8", "model.quantize=int8",
                           "lora.enabled=true", 'lora.targets=["query", "key", "value", "attention_output"]',
                           "train.learning_rate=0.05", "train.stages=[4]", "train.max_steps=2", "train.eval_batches=1",
                           "generate.sampler=top_k", "generate.top_k=7", "generate.temperature=0.6",
                           "generate.max_new_tokens=33")
    train(cfg, verbose=0)
    return cfg.run_dir


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
