"""`kgpt2 align`'s held-out DPO loss, reward accuracy and margin, against transformers and numpy.

TRL is not installed here (its trainers are torch-only); tests/test_align_losses.py checks the loss formulas on
fixed log-probs and tests/test_dpo.py the log-probs of one model. This checks them together, end to end: the
oracle scores each held-out pair's chosen and rejected answers with transformers' GPT2LMHeadModel on the `kgpt2
export --to hf` of the aligned run (the policy) and of the run it started from (the reference), and computes DPO's
loss, -log sigmoid(beta ((log pi(c) - log pi(r)) - (log ref(c) - log ref(r)))), in numpy. The token ids are
kgpt2's encoding of the held-out pairs (their tokens are checked in tests/test_dpo.py and tests/test_chat.py).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.backend  # the policy's log-probs on each backend

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BETA = 0.5


def _sum_logprobs(hf_dir, x: dict) -> np.ndarray:
    """[N, 2] summed log-probs of the weighted targets, each answer run alone (no padding) through transformers."""
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    out = np.zeros(x["token_ids"].shape[:2])
    with torch.no_grad():
        for i, j in np.ndindex(*out.shape):
            n = int(x["padding_mask"][i, j].sum())
            assert x["padding_mask"][i, j, :n].all()  # the row's tokens first, padding after
            logits = model(torch.tensor(x["token_ids"][i, j, :n][None].astype(np.int64))).logits[0].double()
            logp = torch.log_softmax(logits, -1)[torch.arange(n), torch.tensor(x["targets"][i, j, :n].astype(np.int64))]
            out[i, j] = float((logp.numpy() * x["weights"][i, j, :n]).sum())
    return out


def test_heldout_dpo_loss_matches_transformers_and_numpy(tmp_path, tiny_run, kgpt2_cli):
    from kgpt2.data.preference_pairs import read_preferences
    from kgpt2.export import export_run
    from kgpt2.model.models import load_tokenizer
    from kgpt2.run import Run
    from kgpt2.training.checkpoints import CheckpointManager
    from kgpt2.training.preferences import encode_preferences

    # short pairs: the tiny run's 32-token windows hold few of the real set's prompts. Prompts that differ in a
    # number only ("Name 0 ", "Name 1 ", ...) hold out 2 of 48 at 0.4 (the split's crc32 barely spreads them)
    words = "with assert class return yield import lambda while print open".split()
    records = [{"prompt": f"{words[i % 10]} {words[i * 3 // 10 % 10]} {i} ", "chosen": f" {i} is a number"
                f"{'.' * (i % 3)}", "rejected": f" the with {i}"} for i in range(48)]
    (tmp_path / "prefs.json").write_text(json.dumps(records))
    src = shutil.copytree(tiny_run, tmp_path / "runs" / "src")
    r = kgpt2_cli("align", "-q", "run=dpo", "checkpoints_root=runs", 'align.data=["prefs.json"]', "align.steps=3",
                  "align.heldout_fraction=0.4", "train.batch_size=4", f"align.beta={BETA}", "align.init_run=runs/src",
                  "train.learning_rate=0.003", "train.warmup_steps=0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "dpo"
    result = json.loads((run / "align.json").read_text())
    export_run(run, "hf", tmp_path / "hf-policy")
    export_run(src, "hf", tmp_path / "hf-reference")  # its newest checkpoint: where align started
    assert result["start"]["checkpoint"] == CheckpointManager(src).list()[-1].id

    cfg = Run(run).config()
    pairs, unpaired = read_preferences(cfg.align.data, cfg.align.template)
    held = encode_preferences(cfg, pairs, unpaired, load_tokenizer(cfg.model)).held_x
    policy, reference = _sum_logprobs(tmp_path / "hf-policy", held), _sum_logprobs(tmp_path / "hf-reference", held)
    chosen, rejected = BETA * (policy[:, 0] - reference[:, 0]), BETA * (policy[:, 1] - reference[:, 1])
    loss = np.logaddexp(0.0, -(chosen - rejected)).mean()  # -log sigmoid(beta * logits)
    after = result["heldout_after"]
    assert result["pairs"]["heldout"] == len(policy) >= 5
    assert after["loss"] == pytest.approx(loss, rel=1e-4)
    assert after["reward_margin"] == pytest.approx((chosen - rejected).mean(), abs=1e-4)
    assert after["reward_accuracy"] == pytest.approx(np.mean(chosen > rejected))
    assert result["heldout_before"]["loss"] == pytest.approx(np.log(2), rel=1e-6)  # policy == reference
    assert not np.allclose(policy, reference)  # the three steps moved the policy: the loss is not log 2 by luck
