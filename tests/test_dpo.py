"""align: response log-probs, preference files, real training runs per loss, kill and resume.

The losses themselves are checked against TRL's formulas in tests/test_align_losses.py.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kgpt2.errors import UserError

pytestmark = pytest.mark.backend

PREFS = "preferences/llms-from-scratch-instruction-data-with-preference.json"


def test_policy_logprobs_sum_the_response_tokens(tiny_preset, pydoc_tokenizer):
    from kgpt2.align import encode_pairs
    from kgpt2.config import load_config
    from kgpt2.model.models import build_causal_lm
    from kgpt2.training.preferences import PolicyLogProbs

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
    from kgpt2.generation.templates import format_prompt
    from kgpt2.serving.votes import append_vote, make_record

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
    from kgpt2.model.models import build_backbone, save_preset
    from kgpt2.model.tokenizer import Tokenizer

    records = json.loads((shared_data / PREFS).read_text())
    tok = Tokenizer.train([f"{r['instruction']}\n{r['input']}\n{r['chosen']}\n{r['rejected']}" for r in records], 1024)
    cfg = load_config(None, ["model.preset=scratch", "model.num_layers=2", "model.num_heads=2", "model.hidden_dim=32",
                             "model.intermediate_dim=64", "model.max_sequence_length=128",
                             f"model.vocabulary_size={tok.vocab_size}"])
    keras.utils.set_random_seed(0)
    return save_preset(build_backbone(cfg.model), tok, tmp_path_factory.mktemp("pref") / "preset")


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["dpo", "ipo", "hinge", "simpo", "orpo", "kto"])
def test_align_raises_heldout_reward_accuracy_on_real_preferences(tmp_path, shared_data, preference_preset, loss):
    from kgpt2.align import align
    from kgpt2.config import load_config

    cfg = load_config("dpo", [
        f"model.preset={preference_preset}", f"checkpoints_root={tmp_path}", f"run={loss}", "align.init_run=",
        f'align.data=["{shared_data / PREFS}"]', "align.steps=40", "align.heldout_fraction=0.2", f"align.loss={loss}",
        "data.sequence_length=96", "lora.enabled=false", "train.batch_size=8", "train.learning_rate=0.003",
        "train.warmup_steps=5", "train.precision=float32", "train.device=cpu"])
    r = align(cfg, verbose=0)
    assert r["pairs"]["identical_dropped"] == 6
    before, after = r["heldout_before"], r["heldout_after"]
    assert before["pairs"] == after["pairs"] == r["pairs"]["heldout"] > 100
    if loss not in ("simpo", "orpo"):  # at step 0 the policy is the reference: every reward is 0
        assert before["reward_accuracy"] == 0.0 and before["reward_margin"] == 0.0
    if loss == "dpo":
        assert before["loss"] == pytest.approx(np.log(2), abs=1e-4) and after["loss"] < np.log(2)
    assert after["reward_accuracy"] > 0.5 and after["reward_margin"] > before["reward_margin"]
    saved = json.loads((cfg.run_dir / "align.json").read_text())
    assert saved["heldout_after"]["reward_accuracy"] == pytest.approx(after["reward_accuracy"])
    assert saved["loss"] == loss
    if loss == "dpo":  # the aligned run generates with its template, as any run
        _generates_with_its_template(cfg.run_dir)
        from kgpt2.pretrain import run_summary

        with pytest.raises(UserError, match="is an align run, which logs no training steps: its numbers are in"):
            run_summary(cfg.run_dir)  # it said "has no logged steps yet" of a finished run


def _generates_with_its_template(run_dir):
    from kgpt2.generate import Generator, Settings
    from kgpt2.generation.templates import format_prompt
    from kgpt2.run import load_model

    model, tok, _ = load_model(run_dir)
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


def _small_prefs(tmp_path, shared_data, n=160) -> Path:
    """Short raw prompts from the real pairs (the tiny model's window is 32 tokens)."""
    records = json.loads((shared_data / PREFS).read_text())[:n]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps({"prompt": r["instruction"][:60] + "\n", "chosen": r["chosen"],
                                        "rejected": r["rejected"]}) + "\n" for r in records))
    return path


def _align_args(tiny_overrides, tiny_preset, root, run, prefs, *extra):
    return tiny_overrides + [f"model.preset={tiny_preset}", f"checkpoints_root={root}", f"run={run}",
                             f'align.data=["{prefs}"]', "align.steps=24", "align.heldout_fraction=0.25",
                             "train.batch_size=4", "train.checkpoint_every=4", "train.keep_last=2",
                             "model.dropout=0.1", *extra]


@pytest.mark.slow
def test_align_sigkill_then_resume_matches_uninterrupted(tmp_path, shared_data, tiny_preset, tiny_overrides,
                                                         start_cli, kill_and_resume, latest_weights):
    prefs = _small_prefs(tmp_path, shared_data)
    ref = start_cli("align", _align_args(tiny_overrides, tiny_preset, tmp_path, "reference", prefs))
    assert ref.wait(timeout=600) == 0, ref.stderr.read()

    run_dir = tmp_path / "killed"
    args = _align_args(tiny_overrides, tiny_preset, tmp_path, "killed", prefs)
    rng = random.Random(0)
    kills = kill_and_resume("align", args, run_dir, [rng.uniform(0.0, 2.0) for _ in range(2)])
    assert kills >= 1, "the run finished before it could be interrupted; make it longer"

    ref_step, ref_w = latest_weights(tmp_path / "reference")
    step, w = latest_weights(run_dir)
    assert step == ref_step == 24
    for k in ref_w:
        np.testing.assert_allclose(w[k], ref_w[k], rtol=1e-5, atol=1e-6, err_msg=k)
    a, b = (json.loads((d / "align.json").read_text()) for d in (run_dir, tmp_path / "reference"))
    assert a["heldout_after"] == pytest.approx(b["heldout_after"], rel=1e-4)


def test_align_resume_refuses_a_changed_plan_and_leaves_the_dtype_policy(tmp_path, shared_data, tiny_preset,
                                                                         tiny_overrides, kgpt2_cli, monkeypatch, caplog,
                                                                         pydoc_shards):
    import re

    import keras

    from kgpt2.align import align
    from kgpt2.config import load_config
    from kgpt2.training import progress_lines

    prefs = _small_prefs(tmp_path, shared_data, n=60)
    args = _align_args(tiny_overrides, tiny_preset, tmp_path, "run", prefs, "align.steps=4")
    policy = keras.config.dtype_policy().name
    monkeypatch.setattr(progress_lines, "EVERY_S", 0.0)  # a minute in use
    with caplog.at_level("INFO", logger="kgpt2"):
        r = align(load_config(None, args), verbose=2)  # as in a log file: progress lines, not a bar
    lines = [m.getMessage() for m in caplog.records if m.getMessage().startswith("align: step")]
    assert lines and all(re.fullmatch(r"align: step [2-4] of 4 \(\d+\.\d%\), loss \d+\.\d{4}, \d+\.\d\d steps/s, "
                                      r"about .+ to the end of the plan", line) for line in lines), lines
    assert r["checkpoint"] == "ckpt-4" and (tmp_path / "run" / "reference.npz").is_file()
    assert keras.config.dtype_policy().name == policy
    with pytest.raises(UserError, match="beta: 0.1 -> 0.2"):
        align(load_config(None, args + ["align.beta=0.2"]), verbose=0)
    again = align(load_config(None, args), verbose=0)  # nothing left to train: the same result
    assert again["heldout_after"] == pytest.approx(r["heldout_after"])

    # `kgpt2 evaluate` on the align run: held-out reward accuracy and margins, a table and a plot.
    out = kgpt2_cli("-q", "evaluate", "--run", tmp_path / "run", "--checkpoint", "all", "--compare", "base", "--json",
                    cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [row["model"] for row in rows] == ["base", "ckpt-4"]
    assert rows[0]["reward_accuracy"] == 0.0 and rows[0]["reward_margin"] == 0.0
    for key in ("reward_accuracy", "reward_margin", "chosen_reward", "loss"):
        assert rows[1][key] == pytest.approx(r["heldout_after"][key], rel=1e-4, abs=1e-6)
    for suffix in ("json", "csv", "png"):
        assert (tmp_path / "run" / f"evaluation-preferences.{suffix}").stat().st_size > 0
    # With --shards: next-token metrics on them, what aligning cost the language model (--shards was ignored).
    out = kgpt2_cli("evaluate", "--run", tmp_path / "run", "--checkpoint", "all", "--compare", "base", "--json",
                    "--shards", pydoc_shards, "--max-batches", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lm = json.loads(out.stdout[out.stdout.index("["):])
    assert [(row["model"], row["split"]) for row in lm] == [("base", "test"), ("ckpt-4", "test")]
    assert lm[0]["tokens"] == lm[1]["tokens"] > 0 and lm[0]["loss"] != lm[1]["loss"]
    assert json.loads((tmp_path / "run" / "evaluation-test.json").read_text()) == lm
    out = kgpt2_cli("evaluate", "--run", tmp_path / "run", "--max-batches", "2", cwd=tmp_path)
    assert out.returncode == 0 and "--max-batches applies to next-token evaluation on shards" in out.stderr


@pytest.mark.slow
def test_align_on_two_virtual_devices_matches_one(tmp_path, shared_data, tiny_preset, tiny_overrides, latest_weights):
    """train.devices = 2 (JAX, two virtual CPU devices): the same weights as one device, same global batch."""
    prefs = _small_prefs(tmp_path, shared_data, n=60)
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    for run, devices in (("one", "1"), ("two", "2")):
        args = _align_args(tiny_overrides, tiny_preset, tmp_path, run, prefs, "align.steps=4",
                           "model.dropout=0.0", f"train.devices={devices}", "train.device=auto")
        out = subprocess.run([sys.executable, "-m", "kgpt2.cli", "align", *args], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
    assert "data parallel on 2 devices" in out.stderr + out.stdout
    (s1, w1), (s2, w2) = latest_weights(tmp_path / "one"), latest_weights(tmp_path / "two")
    assert s1 == s2 == 4
    for k in w1:
        np.testing.assert_allclose(w2[k], w1[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_unpaired_records_feed_kto_only(tmp_path):
    from kgpt2.align import read_pairs
    from kgpt2.data.preference_pairs import PairStats, kto_rows, read_preferences, unpair

    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Q1", "chosen": "good", "rejected": "bad"},
        {"prompt": "Q2", "completion": "fine answer", "label": True},
        {"instruction": "Q3", "completion": "rude answer", "label": False},
        {"prompt": "Q4", "chosen": None, "rejected": None, "choice": "both_bad",
         "left_answer": "no", "right_answer": "never"}]) + "\n")
    stats = PairStats()
    pairs, singles = read_preferences(path, stats=stats)
    assert pairs == [{"prompt": "Q1", "chosen": "good", "rejected": "bad"}]
    assert [(s["completion"], s["label"]) for s in singles] == [("fine answer", True), ("rude answer", False),
                                                                 ("no", False), ("never", False)]
    assert (stats.read, stats.unpaired, stats.ties) == (4, 4, 0)
    with pytest.raises(UserError, match="only align.loss = \"kto\""):
        read_pairs(path)
    examples = unpair(pairs) + singles
    rows = kto_rows(examples, seed=0)
    assert [r[:2] for r in rows] == [(e["prompt"], e["completion"]) for e in examples]
    # Slot 1 is another example's completion: every row's KL partner differs from its own answer.
    assert all(r[2] != r[1] for r in rows) and sorted(r[2] for r in rows) == sorted(e["completion"] for e in examples)


def test_demo_votes_give_kto_examples_and_paired_losses_skip_them(tmp_path):
    """A/B votes are pairs; both bad, thumbs up and down are KTO examples (skipped by DPO); a tie is nothing."""
    from kgpt2.data.preference_pairs import PairStats, read_pairs, read_preferences
    from kgpt2.serving.votes import append_vote, make_rating, make_record

    run = tmp_path / "run"
    for rec in [make_record("Q1", "good", "bad", "a", "r/base", "r/ckpt-9", {}),
                make_record("Q2", "meh", "nope", "both_bad", "r/base", "r/ckpt-9", {}, mode="arena"),
                make_record("Q3", "x", "y", "tie", "r/base", "r/ckpt-9", {}),
                make_rating("Q4", "fine", "up", "r/ckpt-9", {"seed": 1}),
                make_rating("Q5", "rude", "down", "r/base", {}, mode="named", side="b")]:
        append_vote(run, rec)
    stats = PairStats()
    pairs, singles = read_preferences(run, stats=stats)
    assert pairs == [{"prompt": "Q1", "chosen": "good", "rejected": "bad"}]
    assert [(s["prompt"], s["completion"], s["label"], s["vote"]) for s in singles] == [
        ("Q2", "meh", False, True), ("Q2", "nope", False, True), ("Q4", "fine", True, True), ("Q5", "rude", False, True)]
    assert (stats.read, stats.ties, stats.unpaired) == (5, 1, 4)
    assert read_pairs(run) == pairs  # DPO on the same votes: the single answers are skipped, not refused


def test_init_run_of_another_model_names_the_fields(tmp_path, tiny_run, make_tiny_config, tiny_preset, pydoc_shards):
    """align.init_run on a run of another shape says which fields differ (the demo-votes journey: lora, length)."""
    from kgpt2.align import _start_checkpoint
    from kgpt2.errors import UserError

    cfg = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=kto", "lora.enabled=true", "data.sequence_length=16")
    with pytest.raises(UserError) as e:
        _start_checkpoint(cfg, tiny_run, "latest")
    assert "lora.enabled: False -> True" in str(e.value) and "data.sequence_length: 32 -> 16" in str(e.value), str(e.value)


def test_the_dpo_recipe_takes_its_model_from_the_run_it_starts_from(tmp_path, tiny_run, monkeypatch):
    """`kgpt2 align --config dpo align.init_run=RUN`: RUN's preset, LoRA and sequence length, whatever RUN was
    trained with (the recipe set GPT-2 base and LoRA itself, so a run trained from scratch or without LoRA was
    refused, or sent to download gpt2_base_en); with no such run, one sentence and no run folder."""
    from dataclasses import asdict

    from kgpt2.align import align
    from kgpt2.config import load_config
    from kgpt2.run import Run

    theirs = Run(tiny_run).config()
    cfg = load_config("dpo", [f"align.init_run={tiny_run}"])
    assert asdict(cfg.model) == asdict(theirs.model) and asdict(cfg.lora) == asdict(theirs.lora)
    assert cfg.data.sequence_length == theirs.data.sequence_length
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        align(load_config("dpo"))  # the recipe's own init_run, checkpoints/alpaca, not trained here
    assert str(e.value).startswith("align.init_run 'checkpoints/alpaca' is not a kgpt2 run directory (no config.json); "
                                   "train it first (the dpo recipe starts from `kgpt2 train --config alpaca`)")
    with pytest.raises(UserError, match=r"^align counts its optimizer steps with align\.steps \(now [\d,]+\); "
                                        r"train\.max_steps is kgpt2 train's: set align\.steps=3 instead$"):
        align(load_config("dpo", [f"align.init_run={tiny_run}", "train.max_steps=3"]))  # ran 300 steps silently
    with pytest.raises(UserError) as e:  # a user's own run: the recipe's start is no advice for it
        align(load_config("dpo", ["align.init_run=checkpoints/mine"]))
    assert str(e.value).endswith("train it first, or set align.init_run= to start from model.preset")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("loss", ["kto", "dpo"])
def test_a_split_with_an_empty_side_says_which_fractions_split_the_prompts(pydoc_tokenizer, loss):
    """Two demo prompts: a fraction that holds out both (or neither) is refused with the range that works."""
    import re

    from kgpt2.config import load_config
    from kgpt2.data.preference_pairs import heldout_scores
    from kgpt2.training.preferences import encode_preferences

    pairs = [{"prompt": p, "chosen": " is a statement.", "rejected": " no"} for p in ("The assert statement",
                                                                                     "The with statement")]
    cfg = load_config(None, [f"align.loss={loss}"])
    low, high = sorted(heldout_scores([p["prompt"] for p in pairs], cfg.seed))
    for fraction, side in ((low / 2, "none of the"), ((high + 1) / 2, "all ")):
        cfg.align.heldout_fraction = fraction
        with pytest.raises(UserError) as e:
            encode_preferences(cfg, pairs, [], pydoc_tokenizer)
        message = str(e.value)
        assert message.startswith(side) and "(2 prompts)" in message and "\n" not in message
        lo, hi = map(float, re.search(r"any align.heldout_fraction from ([\d.]+) to ([\d.]+) splits", message).groups())
        for fraction in (lo, hi):  # both ends of the range it names work
            cfg.align.heldout_fraction = fraction
            rows = encode_preferences(cfg, pairs, [], pydoc_tokenizer)
            assert len(rows.held_labels) and len(rows.train_labels)
    cfg.align.heldout_fraction = 0.5
    with pytest.raises(UserError, match="needs two different prompts at least"):
        encode_preferences(cfg, pairs[:1], [], pydoc_tokenizer)
