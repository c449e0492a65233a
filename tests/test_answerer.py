"""The demo's generation seam: batched decoding, the model pool and incremental text.

Answers decoded in a batch are checked against `kgpt2.generate.Generator`
decoding each prompt alone (the independent path the CLI uses).
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

from kgpt2.run import BASE, list_checkpoints


@pytest.fixture(scope="module")
def pool_root(tmp_path_factory, tiny_run):
    root = tmp_path_factory.mktemp("pool-root")
    shutil.copytree(tiny_run, root / "tiny")
    shutil.copytree(tiny_run, root / "tiny-copy")
    return root


@pytest.fixture(scope="module")
def pool(pool_root):
    from kgpt2.model_pool import ModelPool

    return ModelPool(pool_root)


def _collect(answerer, jobs):
    texts, done = ["" for _ in jobs], [None for _ in jobs]
    for i, kind, payload in answerer.answer_many(jobs):
        assert kind != "error", payload
        if kind == "text":
            texts[i] += payload
        else:
            done[i] = payload
    return texts, done


@pytest.mark.parametrize("sampler", ["greedy", "top_p"])
def test_a_batch_answers_as_each_prompt_would_alone(pool, sampler):
    from kgpt2.answerer import Answerer, Job
    from kgpt2.generate import Generator, Settings

    w = pool.get("tiny", list_checkpoints(pool.root / "tiny")[-1])
    s = Settings(sampler=sampler, max_new_tokens=10)
    prompts = ["The assert statement", "The class keyword", "The import system"]
    ids = [w.decoder.tokenizer.encode(p) for p in prompts]
    length = len(ids[0])
    ids = [i[:length] for i in ids if len(i) >= length]
    seeds = [1, 2, 3][:len(ids)]
    jobs = [Job(w, i, length + 10, Settings(sampler=sampler, max_new_tokens=10, seed=seed)) for i, seed in zip(ids, seeds)]
    answerer = Answerer(window_s=0.2, max_batch=8)
    texts, done = _collect(answerer, jobs)
    assert answerer.batches == 1 and answerer.rows == len(jobs), "arrived together: one batch"
    alone = Generator(w.decoder.model, w.decoder.tokenizer)
    for var, value in zip(alone.model.variables, w.values):
        var.assign(value)
    expected = [alone.tokenizer.decode(alone.generate_ids(i, Settings(sampler=sampler, max_new_tokens=10, seed=seed)))
                for i, seed in zip(ids, seeds)]
    assert texts == expected
    assert all(d["tokens"] >= 1 and d["seconds"] > 0 for d in done)


def test_checkpoints_of_runs_with_one_base_share_a_model(pool):
    builds = pool.builds
    ckpts = list_checkpoints(pool.root / "tiny")
    a = pool.get("tiny", ckpts[1])
    b = pool.get("tiny-copy", ckpts[-1])
    c = pool.get("tiny", BASE)
    assert a.decoder is b.decoder is c.decoder
    assert pool.builds <= max(builds, 1)
    assert "stage" in a.info and "step" in a.info and "untrained" in c.info and "parameters" in a.info


def test_different_bases_are_kept_side_by_side_and_the_oldest_evicted(pool_root, tmp_path):
    from kgpt2.model_pool import ModelPool

    for name, alpha in (("a", 8.0), ("b", 16.0), ("c", 32.0)):  # three bases of one size
        shutil.copytree(pool_root / "tiny", tmp_path / name, ignore=shutil.ignore_patterns("ckpt-*"))
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        cfg["lora"]["enabled"], cfg["lora"]["alpha"] = True, alpha
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    pool = ModelPool(tmp_path)
    a, b = pool.get("a", BASE), pool.get("b", BASE)
    for _ in range(3):
        assert pool.get("a", BASE).decoder is a.decoder and pool.get("b", BASE).decoder is b.decoder
    assert pool.builds == 2, "alternating between two bases does not rebuild them"
    pool.budget = pool.nbytes()  # room for two of the three models
    pool.get("c", BASE)
    assert pool.builds == 3 and pool.evictions >= 1
    assert pool.get("b", BASE).decoder is b.decoder, "b was used after a: a went first"
    assert pool.builds == 3


def test_one_at_a_time_serves_in_order_and_batching_shares_batches(pool):
    from kgpt2.answerer import Answerer, Job
    from kgpt2.generate import Settings

    w = pool.get("tiny", BASE)
    ids = w.decoder.tokenizer.encode("The assert statement")
    jobs = [Job(w, ids, len(ids) + 6, Settings(sampler="top_p", max_new_tokens=6, seed=i)) for i in range(6)]
    serial, batched = Answerer(batching=False), Answerer(window_s=0.2, max_batch=4)
    texts_serial, _ = _collect(serial, jobs)
    texts_batched, _ = _collect(batched, jobs)
    assert texts_serial == texts_batched
    assert serial.batches == 6 and batched.batches == 2  # 6 rows, at most 4 per batch


def test_closing_the_stream_stops_the_answer(pool):
    from kgpt2.answerer import Answerer, Job
    from kgpt2.generate import Settings

    w = pool.get("tiny", BASE)
    ids = w.decoder.tokenizer.encode("The")
    answerer = Answerer(window_s=0.0)
    stream = answerer.answer_many([Job(w, ids, w.context, Settings(sampler="random", max_new_tokens=60))])
    next(stream)
    stream.close()  # what Gradio does when the user presses Stop
    done = _collect(answerer, [Job(w, ids, len(ids) + 2, Settings(sampler="greedy", max_new_tokens=2))])[1]
    assert done[0]["tokens"] >= 1, "the worker moved on to the next job"


def test_a_character_split_across_tokens_never_shows_the_replacement_character(gpt2_tokenizer):
    from kgpt2.batch_decode import IncrementalText, token_bytes_of

    text = "naïve 🙂 café — 日本語\n\n"
    ids = gpt2_tokenizer.encode(text)
    pieces = []
    t = IncrementalText(token_bytes_of(gpt2_tokenizer))
    for i in ids:
        pieces.append(t.push(i))
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    # The per-token decode the old stream did shows U+FFFD for the emoji's pieces.
    assert any("\ufffd" in gpt2_tokenizer.decode([i]) for i in ids)
