"""Packed instruction training from the command line: `kgpt2 prepare` + `kgpt2 train` on real Alpaca records.

A user who prepares instruction (or chat) data and trains gets several
examples per window (`data.windows = "auto"` resolves to "packed_examples"),
each attending only to itself, positions restarting, loss on the responses
only. Checked here on what the commands wrote: the padding they report
against an independent count, the weights of the trainer's own batches
against the Alpaca template, the trained model's logits of a packed example
against the example alone, `kgpt2 evaluate` against one example per window,
and a run stopped with Ctrl-C and resumed against the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytestmark = [pytest.mark.backend, pytest.mark.slow]  # training runs through the CLI (minutes on a shared CPU)

T, BATCH = 256, 4


def shape(tok_dir) -> list[str]:
    return ["model.preset=scratch", f"model.tokenizer={tok_dir}", "model.vocabulary_size=0", "model.num_layers=2",
            "model.num_heads=2", "model.hidden_dim=32", "model.intermediate_dim=64", f"model.max_sequence_length={T}"]


def train_args(run: str) -> list[str]:
    """`kgpt2 train` arguments of the runs here (in the work folder; no data.windows: "auto" decides)."""
    return [f"run={run}", "checkpoints_root=runs", "model.preset=preset", "data.shards=shards",
            f"data.sequence_length={T}", 'train.stages=["rest"]', f"train.batch_size={BATCH}", "train.epochs=2",
            "train.learning_rate=0.003", "train.warmup_steps=2", "train.eval_batches=2", "train.precision=float32",
            "train.device=cpu", "lora.enabled=false", "train.checkpoint_every=4", "train.keep_last=0"]


def cli(work: Path, *args) -> SimpleNamespace:
    """`kgpt2 ARGS` run from `work` in this process (a subprocess spends ~15 s importing TensorFlow again), for
    the module's fixture, where capsys is not at hand: its stdout and stderr, after it succeeded."""
    from kgpt2.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(work), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    assert code == 0, err.getvalue()[-3000:]
    return SimpleNamespace(stdout=out.getvalue(), stderr=err.getvalue())


def kgpt2(capsys, *argv) -> tuple[int, str, str]:
    """`kgpt2 ARGV` in this process: (exit status, stdout, stderr)."""
    from kgpt2.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def records(shared_data, pydoc_tokenizer):
    """Real Alpaca records short enough (<= 100 tokens with the pydoc BPE) that several share a 256-token window."""
    from kgpt2.generation.templates import format_prompt

    every = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())
    short = [r for r in every if r["output"].strip() and len(pydoc_tokenizer.encode(
        format_prompt(r["instruction"], r["input"]) + r["output"].strip())) < 100]
    return short[:160]


@pytest.fixture(scope="module")
def packed_run(tmp_path_factory, records, pydoc_tokenizer_dir):
    """prepare -> pretrain init -> train through the CLI in a folder outside the checkout."""
    work = tmp_path_factory.mktemp("packed-cli")
    (work / "alpaca_short.json").write_text(json.dumps(records))
    cli(work, "-q", "prepare", "--source", "alpaca_short.json", "--out", "shards", "--tokenizer", pydoc_tokenizer_dir)
    cli(work, "-q", "pretrain", "--out", "preset", "init", *shape(pydoc_tokenizer_dir), f"data.sequence_length={T}")
    done = cli(work, "train", *train_args("packed"))
    return {"work": work, "run": work / "runs" / "packed", "stdout": done.stdout, "stderr": done.stderr}


def _examples(records, tok):
    """token ids of each record as prepare writes it -> the number of its prompt tokens."""
    from kgpt2.data.examples import encode_example
    from kgpt2.generation.templates import format_prompt

    out = {}
    for r in records:
        prompt = format_prompt(r["instruction"], r["input"])
        ids, _ = encode_example(tok, prompt, r["output"].strip())
        out[tuple(ids.tolist())] = len(tok.encode(prompt))
    return out


def test_train_packs_instruction_examples_and_reports_the_padding(packed_run):
    import pandas as pd

    from kgpt2.data.shards import ShardSet

    run = packed_run["run"]
    assert json.loads((run / "config.json").read_text())["data"]["windows"] == "packed_examples"  # "auto" resolved
    split = ShardSet(packed_run["work"] / "shards").split("train")
    lengths = np.diff(split.offsets)
    assert lengths.max() <= T + 1  # nothing cut: every example's tokens are all in some window
    # One example per window: N windows, padded; counted here from the shards, not by kgpt2.
    unpacked = 1 - (lengths - 1).sum() / (math.ceil(len(lengths) / BATCH) * BATCH * T)
    steps = pd.read_csv(run / "logs" / "steps.csv")
    per_epoch = len(steps) // 2
    packed = 1 - (lengths - 1).sum() / (per_epoch * BATCH * T)  # every target position of every example, once
    stage = pd.read_csv(run / "stages.csv").iloc[-1]
    assert stage["padding"] == pytest.approx(packed, abs=1e-4)
    assert stage["padding_one_per_window"] == pytest.approx(unpacked, abs=1e-4)
    assert steps["padding"].mean() == pytest.approx(packed, abs=1e-3)  # the step log's per-step column
    assert packed < unpacked / 4 and stage["examples_per_window"] > 2
    line = re.search(r"padding: ([\d.]+)% of the target positions \(([\d.]+) examples packed per window; "
                     r"one example per window: ([\d.]+)%\)", packed_run["stdout"])
    assert line, packed_run["stdout"]
    assert float(line[1]) == pytest.approx(100 * packed, abs=0.05)
    assert float(line[3]) == pytest.approx(100 * unpacked, abs=0.05)


def test_the_trainers_batches_weigh_exactly_the_response_tokens(packed_run, records, pydoc_tokenizer):
    from kgpt2.data.shards import ShardSet
    from kgpt2.data.stage_plan import plan_stages
    from kgpt2.run import Run
    from kgpt2.training.training_data import stage_batches

    cfg = Run(packed_run["run"]).config()
    split = ShardSet(cfg.data.shards).split("train")
    stage = plan_stages(cfg.train.stages, split.num_articles, cfg.train.oversize)[0]
    prompts = _examples(records, pydoc_tokenizer)
    for epoch in (0, 1):
        batches, seen = stage_batches(cfg, split, stage, epoch), []
        for b in range(len(batches)):
            x, y, w = batches[b]
            assert set(x) == {"token_ids", "segment_ids", "positions"}
            assert w[x["segment_ids"] == 0].sum() == 0  # no loss on padding
            for row in range(BATCH):
                segs = x["segment_ids"][row]
                for seg in sorted(set(segs.tolist()) - {0}):
                    at = np.flatnonzero(segs == seg)
                    assert np.array_equal(at, np.arange(at[0], at[0] + len(at)))  # one contiguous run
                    ids = tuple(x["token_ids"][row, at].tolist() + [int(y[row, at[-1]])])
                    n_prompt = prompts[ids]  # a whole record, as prepare encoded it
                    assert np.array_equal(x["positions"][row, at], np.arange(len(at)))  # positions restart
                    assert np.array_equal(y[row, at], ids[1:])  # targets never cross into the next example
                    # target t is token t + 1: trained iff it is a response token or the end-of-text
                    assert w[row, at].tolist() == [1.0 if t + 1 >= n_prompt else 0.0 for t in range(len(at))]
                    seen.append(ids)
        assert len(seen) == len(set(seen)) == split.num_articles  # each example once per epoch


def test_a_packed_example_has_the_logits_it_has_alone_in_the_trained_model(packed_run):
    from keras import ops

    from kgpt2.data.batches import article_batches
    from kgpt2.data.shards import ShardSet
    from kgpt2.model.packed_attention import packed_logits
    from kgpt2.run import load_model

    model, _, cfg = load_model(packed_run["run"])
    split = ShardSet(cfg.data.shards).split("train")
    x, _, _ = article_batches(split, 0, split.num_articles, windows="packed_examples", loss_on="response",
                              sequence_length=T, batch_size=BATCH, seed=0, shuffle=False)[0]
    row = int(np.argmax(x["segment_ids"].max(axis=1)))
    assert x["segment_ids"][row].max() >= 3
    packed = ops.convert_to_numpy(packed_logits(model, x["token_ids"][row:row + 1], x["segment_ids"][row:row + 1],
                                                x["positions"][row:row + 1])).astype("float64")[0]
    for seg in range(1, x["segment_ids"][row].max() + 1):
        at = np.flatnonzero(x["segment_ids"][row] == seg)
        alone = np.zeros((1, T), "int32")
        alone[0, :len(at)] = x["token_ids"][row, at]  # the example alone, from position 0, the plain model
        logits = model.predict({"token_ids": alone, "padding_mask": np.arange(T)[None] < len(at)}, verbose=0)
        np.testing.assert_allclose(packed[at], np.asarray(logits, "float64")[0, :len(at)], rtol=1e-4, atol=1e-4,
                                   err_msg=f"segment {seg}")


def test_evaluate_scores_a_packed_run_on_response_tokens_as_one_example_per_window(packed_run, capsys, monkeypatch):
    import dataclasses

    from kgpt2.data.batches import to_dataset
    from kgpt2.data.shards import ShardSet
    from kgpt2.run import load_model
    from kgpt2.training.metrics import compile_lm, summarise
    from kgpt2.training.validation import split_batches

    monkeypatch.chdir(packed_run["work"])
    code, out, err = kgpt2(capsys, "evaluate", "--run", "runs/packed", "--split", "validation")
    assert code == 0, err
    (row,) = json.loads((packed_run["run"] / "evaluation-validation.json").read_text())
    model, _, cfg = load_model(packed_run["run"])
    split = ShardSet(cfg.data.shards).split("validation")
    # Only response tokens (and each end-of-text) are scored: the mask on every target of every example.
    responses = sum(int(np.sum(split.mask[s + 1:e])) for s, e in zip(split.offsets[:-1], split.offsets[1:]))
    assert row["tokens"] == responses
    one_per_window = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, windows="example"))
    source = split_batches(one_per_window, split, None)
    plain = summarise(compile_lm(model).evaluate(to_dataset(source), verbose=0, return_dict=True))
    assert source.scored_tokens() == responses
    assert row["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert row["accuracy"] == pytest.approx(plain["accuracy"], abs=1e-6)


def test_a_stopped_packed_run_resumes_to_the_uninterrupted_weights(packed_run, capsys, monkeypatch):
    from kgpt2.train import Trainer
    from kgpt2.training.checkpoints import CheckpointManager

    monkeypatch.chdir(packed_run["work"])
    fit, calls = Trainer._fit, []

    def stop_at_the_fourth_fit(self, *args):  # Ctrl-C after checkpoints 4, 8 and 12 (in the second epoch)
        calls.append(args)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return fit(self, *args)

    monkeypatch.setattr(Trainer, "_fit", stop_at_the_fourth_fit)
    code, _, err = kgpt2(capsys, "train", *train_args("stopped"))
    assert code == 130, err
    stopped = CheckpointManager(packed_run["work"] / "runs" / "stopped").latest()
    assert stopped.step == 12 and stopped.state["epoch"] == 1 and not stopped.state["stage_end"]
    monkeypatch.setattr(Trainer, "_fit", fit)
    # The cursor counts packed windows: another kind of window cannot pick it up mid-stage.
    code, _, err = kgpt2(capsys, "train", "--run", "runs/stopped", "data.windows=example")
    assert code == 2 and "cannot change data.windows of run" in err and "in the middle of stage 1" in err
    code, out, err = kgpt2(capsys, "train", "--run", "runs/stopped")
    assert code == 0, err
    reference, resumed = (CheckpointManager(packed_run["work"] / "runs" / name).latest() for name in ("packed", "stopped"))
    assert resumed.step == reference.step and resumed.state["stage_end"]
    with np.load(reference.path / "weights.npz") as a, np.load(resumed.path / "weights.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert resumed.state["stage_metrics"][-1]["loss"] == pytest.approx(reference.state["stage_metrics"][-1]["loss"],
                                                                        rel=1e-5)
    rows = (packed_run["work"] / "runs" / "stopped" / "logs" / "steps.csv").read_text().splitlines()[1:]
    assert sorted(int(r.split(",")[0]) for r in rows) == list(range(1, reference.step + 1))


def test_a_bad_windows_value_is_one_sentence(packed_run, capsys, monkeypatch):
    monkeypatch.chdir(packed_run["work"])
    code, _, err = kgpt2(capsys, "train", *train_args("bad"), "data.windows=packed-examples")
    assert code == 2
    assert 'data.windows must be one of "auto", "packed", "example", "packed_examples"; got "packed-examples"' in err
    assert not (packed_run["work"] / "runs" / "bad").exists()


def test_chat_conversations_pack_with_the_loss_on_assistant_turns(tmp_path, shared_data, pydoc_tokenizer):
    from kgpt2.data.batches import article_batches, resolve_windows
    from kgpt2.data.shards import ShardSet, prepare

    every = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:80]
    chats = [{"messages": [{"role": "user", "content": a["instruction"]}, {"role": "assistant", "content": a["output"]},
                           {"role": "user", "content": b["instruction"]}, {"role": "assistant", "content": b["output"]}]}
             for a, b in zip(every[::2], every[1::2])]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    manifest = prepare(str(tmp_path / "chat.jsonl"), tmp_path / "shards", pydoc_tokenizer, splits="train", progress=False)
    assert resolve_windows("auto", manifest) == "packed_examples"
    split = ShardSet(tmp_path / "shards").split("train")
    article = {tuple(split.article_tokens(i)[:1025].tolist()): i for i in range(split.num_articles)}
    batches = article_batches(split, 0, split.num_articles, windows="packed_examples", loss_on="response",
                              sequence_length=1024, batch_size=2, seed=0)
    seen = 0
    for b in range(len(batches)):
        x, y, w = batches[b]
        for row in range(len(w)):
            for seg in sorted(set(x["segment_ids"][row].tolist()) - {0}):
                at = np.flatnonzero(x["segment_ids"][row] == seg)
                i = article[tuple(x["token_ids"][row, at].tolist() + [int(y[row, at[-1]])])]
                s, e = split.offsets[i], min(split.offsets[i + 1], split.offsets[i] + 1025)
                assert np.array_equal(y[row, at], split.tokens[s + 1:e])
                assert np.array_equal(w[row, at], split.mask[s + 1:e])  # assistant turns and their end-of-text only
                seen += 1
    assert seen == split.num_articles and batches.examples_per_window() > 1.5
