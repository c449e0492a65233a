"""DPO: the loss against numpy, response log-probs, preference files, and a real training run."""

import json

import numpy as np
import pytest

from kgpt2.errors import UserError

PREFS = "preferences/llms-from-scratch-instruction-data-with-preference.json"


def _numpy_dpo(ref, pol, beta):
    z = beta * ((pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1]))
    return np.logaddexp(0.0, -z), z  # -log sigmoid(z) = log(1 + e^-z)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_matches_numpy(beta):
    import keras

    from kgpt2.align import DPOLoss, dpo_metrics

    ref = np.array([[-12.0, -15.5], [-30.25, -8.0], [-4.0, -4.0], [-50.0, -49.0]], dtype="float32")
    pol = np.array([[-10.0, -16.0], [-31.0, -7.5], [-4.0, -4.0], [-20.0, -60.0]], dtype="float32")
    per_pair, z = _numpy_dpo(ref.astype("float64"), pol.astype("float64"), beta)
    loss = DPOLoss(beta=beta)
    assert float(loss(ref, pol)) == pytest.approx(per_pair.mean(), rel=1e-5)
    by_name = {}
    for m in dpo_metrics(beta):
        m.update_state(ref, pol)
        by_name[m.name] = float(m.result())
    assert by_name["reward_accuracy"] == pytest.approx(np.mean(z > 0))  # ties (z = 0) are not wins
    assert by_name["reward_margin"] == pytest.approx(z.mean(), rel=1e-5)
    assert by_name["chosen_reward"] == pytest.approx(beta * (pol[:, 0] - ref[:, 0]).mean(), rel=1e-5)
    assert keras.ops.convert_to_numpy(loss.call(ref, pol)) == pytest.approx(per_pair, rel=1e-5)


def test_policy_logprobs_sum_the_response_tokens(tiny_preset, pydoc_tokenizer):
    from kgpt2.align import PolicyLogProbs, encode_pairs
    from kgpt2.config import load_config
    from kgpt2.models import build_causal_lm

    cfg = load_config(None, [f"model.preset={tiny_preset}", "lora.enabled=false", "train.precision=float32"])
    policy = build_causal_lm(cfg)
    pairs = [{"prompt": "The assert statement", "chosen": " is a debugging aid.", "rejected": " is bad"},
             {"prompt": "### Instruction:\nSay yes.\n\n### Response:\n", "chosen": "Yes.", "rejected": "No way, never."}]
    T = 48
    inputs, kept = encode_pairs(pydoc_tokenizer, pairs, T)
    assert list(kept) == [0, 1]
    got = np.asarray(PolicyLogProbs(policy).predict(inputs, verbose=0))
    for i, pair in enumerate(pairs):
        for j, response in enumerate((pair["chosen"], pair["rejected"])):
            prompt_ids = pydoc_tokenizer.encode(pair["prompt"])
            ids = prompt_ids + pydoc_tokenizer.encode(response) + [pydoc_tokenizer.eos_id]
            x = np.zeros((1, T), "int32")
            x[0, :len(ids) - 1] = ids[:-1]
            mask = np.zeros((1, T), bool)
            mask[0, :len(ids) - 1] = True
            logits = np.asarray(policy.predict({"token_ids": x, "padding_mask": mask}, verbose=0), "float64")[0]
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - logits.max(-1, keepdims=True)
            # Targets are tokens len(prompt) .. end (response + end-of-text), predicted at t - 1.
            want = sum(logp[t - 1, ids[t]] for t in range(len(prompt_ids), len(ids)))
            assert got[i, j] == pytest.approx(want, rel=1e-4, abs=1e-3)


def test_read_pairs_skips_ties_and_identical(tmp_path, shared_data):
    from kgpt2.align import PairStats, read_pairs
    from kgpt2.templates import format_prompt
    from kgpt2.votes import append_vote, make_record

    run = tmp_path / "run"
    append_vote(run, make_record("Say hi.", "hi", "go away", "a", "r/base", "r/ckpt-9", {"seed": 0}))
    append_vote(run, make_record("Say hi.", "hello", "hey", "tie", "r/base", "r/ckpt-9", {"seed": 0}))
    append_vote(run, make_record("Name a colour.", "Blue.", "No.", "b", "r/base", "r/ckpt-9", {},
                                 template="instruction", model_input=format_prompt("Name a colour.")))
    extra = tmp_path / "pairs.jsonl"
    extra.write_text(json.dumps({"prompt": "Q", "chosen": "a", "rejected": "a"}) + "\n"
                     + json.dumps({"instruction": "Add.", "input": "1+1", "chosen": "2", "rejected": "3"}) + "\n")
    stats = PairStats()
    pairs = read_pairs([run, extra], stats=stats)
    assert (stats.read, stats.ties, stats.identical) == (5, 1, 1)
    assert pairs[0] == {"prompt": "Say hi.", "chosen": "hi", "rejected": "go away"}
    assert pairs[1] == {"prompt": format_prompt("Name a colour."), "chosen": "No.", "rejected": "Blue."}
    assert pairs[2]["prompt"] == format_prompt("Add.", "1+1")

    stats = PairStats()
    real = read_pairs(shared_data / PREFS, stats=stats)
    assert (stats.read, stats.identical, len(real)) == (1100, 6, 1094)


@pytest.fixture(scope="module")
def preference_preset(tmp_path_factory, shared_data):
    """A 2-layer GPT-2 with a 1,024-token BPE trained on the preference texts (small and fast)."""
    import keras

    from kgpt2.config import load_config
    from kgpt2.models import build_backbone, save_preset
    from kgpt2.tokenizer import Tokenizer

    records = json.loads((shared_data / PREFS).read_text())
    tok = Tokenizer.train([f"{r['instruction']}\n{r['input']}\n{r['chosen']}\n{r['rejected']}" for r in records], 1024)
    cfg = load_config(None, ["model.preset=scratch", "model.num_layers=2", "model.num_heads=2", "model.hidden_dim=32",
                             "model.intermediate_dim=64", "model.max_sequence_length=128",
                             f"model.vocabulary_size={tok.vocab_size}"])
    keras.utils.set_random_seed(0)
    return save_preset(build_backbone(cfg.model), tok, tmp_path_factory.mktemp("pref") / "preset")


@pytest.mark.slow
def test_dpo_raises_heldout_reward_accuracy_on_real_preferences(tmp_path, shared_data, preference_preset):
    from kgpt2.align import align
    from kgpt2.config import load_config
    from kgpt2.generate import Generator, Settings
    from kgpt2.templates import format_prompt
    from kgpt2.run import load_model

    cfg = load_config("dpo", [
        f"model.preset={preference_preset}", f"checkpoints_root={tmp_path}", "run=dpo", "align.init_run=",
        f'align.data=["{shared_data / PREFS}"]', "align.steps=40", "align.heldout_fraction=0.2",
        "data.sequence_length=96", "lora.enabled=false", "train.batch_size=8", "train.learning_rate=0.003",
        "train.warmup_steps=5", "train.precision=float32", "train.device=cpu"])
    r = align(cfg, verbose=0)
    assert r["pairs"]["identical_dropped"] == 6
    assert r["pairs"]["train"] + r["pairs"]["heldout"] + r["pairs"]["too_long_dropped"] == 1094
    before, after = r["heldout_before"], r["heldout_after"]
    # At step 0 the policy is the reference: every reward is 0, loss log 2.
    assert before["reward_accuracy"] == 0.0 and before["loss"] == pytest.approx(np.log(2), abs=1e-4)
    assert after["reward_accuracy"] > 0.65
    assert after["reward_margin"] > 0 and after["loss"] < np.log(2)
    saved = json.loads((cfg.run_dir / "align.json").read_text())
    assert saved["heldout_after"]["reward_accuracy"] == pytest.approx(after["reward_accuracy"])
    model, tok, run_cfg = load_model(cfg.run_dir)
    gen = Generator(model, tok)
    text = gen.generate("Say hello.", Settings(sampler="greedy", max_new_tokens=4, template="instruction"))
    assert text == gen.generate(format_prompt("Say hello."), Settings(sampler="greedy", max_new_tokens=4))


def test_align_rejects_bad_input(tmp_path):
    from kgpt2.align import align, read_pairs
    from kgpt2.config import load_config
    from kgpt2.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        read_pairs([tmp_path / "nope.json"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "chosen": "y"}\n')
    with pytest.raises(UserError, match="chosen and rejected"):
        read_pairs([bad])
    with pytest.raises(UserError, match="align.beta"):
        align(load_config(None, ["align.beta=0", f"checkpoints_root={tmp_path}"]))


def test_preference_file_that_is_not_utf8_is_one_clear_error(tmp_path):
    from kgpt2.align import read_pairs

    path = tmp_path / "prefs.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(UserError, match="not UTF-8"):
        read_pairs(path)
