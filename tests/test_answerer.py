"""The demo's generation seam: the checkpoints' engines, the model pool and streamed text.

Answers decoded together in one engine are checked against
`kgpt2.generate.Generator` decoding each prompt alone (the path the CLI uses).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from kgpt2.run import BASE, list_checkpoints

pytestmark = pytest.mark.backend_neutral  # the request queue over the generator, whose numerics test_generate checks on both


@pytest.fixture(scope="module")
def pool_root(tmp_path_factory, tiny_run):
    root = tmp_path_factory.mktemp("pool-root")
    shutil.copytree(tiny_run, root / "tiny")
    shutil.copytree(tiny_run, root / "tiny-copy")
    return root


@pytest.fixture(scope="module")
def pool(pool_root):
    from kgpt2.serving.model_pool import ModelPool

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
def test_answers_decoded_together_equal_each_prompt_alone(pool, sampler):
    from kgpt2.generate import Generator, Settings
    from kgpt2.serving.answerer import Answerer, Job

    w = pool.get("tiny", list_checkpoints(pool.root / "tiny")[-1])
    prompts = ["The assert statement", "The class keyword is used", "import"]  # different lengths
    ids = [w.engine.tokenizer.encode(p) for p in prompts]
    seeds = [1, 2, 3]
    jobs = [Job(w, i, len(i) + 10, Settings(sampler=sampler, max_new_tokens=10, seed=seed)) for i, seed in zip(ids, seeds)]
    answerer = Answerer()
    texts, done = _collect(answerer, jobs)
    assert answerer.most_together == len(jobs), "arrived together: decoded in one engine's slots together"
    alone = Generator(w.engine.model, w.engine.tokenizer)
    for var, value in zip(alone.model.variables, w.values):
        var.assign(value)
    expected = [alone.tokenizer.decode(alone.generate_ids(i, Settings(sampler=sampler, max_new_tokens=10, seed=seed)))
                for i, seed in zip(ids, seeds)]
    assert texts == expected
    assert all(d["tokens"] >= 1 and d["seconds"] > 0 for d in done)


def test_two_checkpoints_of_one_base_answer_at_once_each_as_alone(pool):
    from kgpt2.generate import Generator, Settings
    from kgpt2.serving.answerer import Answerer, Job

    base, trained = pool.get("tiny", BASE), pool.get("tiny", list_checkpoints(pool.root / "tiny")[-1])
    assert base.engine.model is trained.engine.model and base.engine is not trained.engine
    ids = base.engine.tokenizer.encode("The assert statement")
    s = Settings(sampler="greedy", max_new_tokens=12)
    answerer = Answerer(min_step_s=0.01)  # one token a turn: the two engines take turns
    seen = {0: [], 1: []}
    for i, kind, payload in answerer.answer_many([Job(w, ids, len(ids) + 12, s) for w in (base, trained)]):
        assert kind != "error", payload
        seen[i].append((kind, payload))
    texts = ["".join(p for k, p in seen[i] if k == "text") for i in (0, 1)]
    alone = Generator(base.engine.model, base.engine.tokenizer)
    expected = []
    for w in (base, trained):
        for var, value in zip(alone.model.variables, w.values):
            var.assign(value)
        expected.append(alone.tokenizer.decode(alone.generate_ids(ids, s)))
    assert texts == expected and texts[0] != texts[1], "each checkpoint answers with its own weights"
    assert trained.engine.cache_bytes > 0 and pool.nbytes() >= sum(w.engine.cache_bytes for w in (base, trained))
    assert all(len([k for k, _ in seen[i] if k == "text"]) > 1 for i in (0, 1)), "both streamed, not one after the other"


def test_checkpoints_of_runs_with_one_base_share_a_model(pool):
    builds = pool.builds
    ckpts = list_checkpoints(pool.root / "tiny")
    a = pool.get("tiny", ckpts[1])
    b = pool.get("tiny-copy", ckpts[-1])
    c = pool.get("tiny", BASE)
    assert a.engine.model is b.engine.model is c.engine.model
    assert a.engine is not c.engine, "each checkpoint has its own engine (its own slots and weights)"
    assert pool.builds <= max(builds, 1)
    assert "stage" in a.info and "step" in a.info and "untrained" in c.info and "parameters" in a.info


def test_different_bases_are_kept_side_by_side_and_the_oldest_evicted(pool_root, tmp_path):
    from kgpt2.serving.model_pool import ModelPool

    for name, alpha in (("a", 8.0), ("b", 16.0), ("c", 32.0)):  # three bases of one size
        shutil.copytree(pool_root / "tiny", tmp_path / name, ignore=shutil.ignore_patterns("ckpt-*"))
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        cfg["lora"]["enabled"], cfg["lora"]["alpha"] = True, alpha
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    pool = ModelPool(tmp_path)
    a, b = pool.get("a", BASE), pool.get("b", BASE)
    for _ in range(3):
        assert pool.get("a", BASE).engine is a.engine and pool.get("b", BASE).engine is b.engine
    assert pool.builds == 2, "alternating between two bases does not rebuild them"
    pool.budget = pool.nbytes()  # room for two of the three models
    pool.get("c", BASE)
    assert pool.builds == 3 and pool.evictions >= 1
    assert pool.get("b", BASE).engine.model is b.engine.model, "b was used after a: a went first"
    assert pool.builds == 3


def test_the_model_key_is_cached_per_run_until_its_preset_files_change(tiny_run, tmp_path, monkeypatch):
    import kgpt2.serving.model_pool as model_pool

    shutil.copytree(tiny_run, tmp_path / "r", ignore=shutil.ignore_patterns("ckpt-*"))
    fingerprints = []
    real = model_pool.folder_fingerprint
    monkeypatch.setattr(model_pool, "folder_fingerprint", lambda folder: fingerprints.append(folder) or real(folder))
    pool = model_pool.ModelPool(tmp_path)
    first = pool.get("r", BASE)
    assert len(fingerprints) == 1  # the run's own copy of its preset
    for _ in range(3):
        assert pool.get("r", BASE).engine is first.engine
    assert len(fingerprints) == 1, "an unchanged run is not fingerprinted again"
    cfg, key = pool.config_and_key(tmp_path / "r")
    metadata = Path(cfg.model.preset) / "metadata.json"
    metadata.write_text(metadata.read_text() + "\n")  # the preset's files changed: its key is computed again
    assert pool.config_and_key(tmp_path / "r")[1] != key and len(fingerprints) == 2
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    saved["lora"]["alpha"] = 99.0  # so did the run's config
    (tmp_path / "r" / "config.json").write_text(json.dumps(saved))
    cfg, _ = pool.config_and_key(tmp_path / "r")
    assert cfg.lora.alpha == 99.0 and len(fingerprints) == 3


def test_one_at_a_time_and_batched_answer_alike_and_batching_shares_launches(pool):
    from kgpt2.generate import Settings
    from kgpt2.serving.answerer import Answerer, Job

    w = pool.get("tiny", BASE)
    ids = w.engine.tokenizer.encode("The assert statement")
    jobs = [Job(w, ids, len(ids) + 6, Settings(sampler="top_p", max_new_tokens=6, seed=i)) for i in range(6)]
    serial, batched = Answerer(batching=False), Answerer()
    texts_serial, _ = _collect(serial, jobs)
    texts_batched, _ = _collect(batched, jobs)
    assert texts_serial == texts_batched and len(set(texts_batched)) > 1, "per-request seeds, kept when batched"
    assert serial.most_together == 1 and batched.most_together == 6
    assert batched.launches < serial.launches


def test_a_new_request_joins_a_running_engine_and_cancel_frees_its_slot(pool):
    from kgpt2.generate import Settings
    from kgpt2.serving.answerer import Answerer, Job

    w = pool.get("tiny", BASE)
    ids = w.engine.tokenizer.encode("The")
    answerer = Answerer(min_step_s=0.02)
    long = Job(w, ids, w.context, Settings(sampler="random", max_new_tokens=w.context - len(ids), seed=5))
    stream = answerer.answer_many([long])
    next(stream)
    assert sum(r is not None for r in w.engine.rows) == 1
    short = [Job(w, ids, len(ids) + 3, Settings(sampler="greedy", max_new_tokens=3))]
    done = _collect(answerer, short)[1]  # joins between launches, ends while the long one runs
    assert done[0]["tokens"] >= 1 and sum(r is not None for r in w.engine.rows) == 1
    stream.close()  # what Gradio does when the user presses Stop
    deadline = time.time() + 30
    while any(r is not None for r in w.engine.rows) and time.time() < deadline:
        time.sleep(0.05)
    assert all(r is None for r in w.engine.rows) and w.engine.busy == 0, "the cancelled request left its slot"
    done = _collect(answerer, short)[1]
    assert done[0]["tokens"] >= 1, "the worker moved on to the next job"


def test_a_character_split_across_tokens_never_shows_the_replacement_character(gpt2_tokenizer):
    from kgpt2.generation.engine import Request, Sampling

    text = "naïve 🙂 café — 日本語\n\n"
    ids = gpt2_tokenizer.encode(text)
    request, pieces = Request([0], Sampling(), 100), []
    for n in range(1, len(ids) + 1):  # what the engine does: the whole answer decoded after each token
        request.text = gpt2_tokenizer.decode(ids[:n])
        pieces.append(request.take_text())
    request.finish_reason = "length"
    pieces.append(request.take_text())
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    # The per-token decode shows U+FFFD for the emoji's pieces.
    assert any("\ufffd" in gpt2_tokenizer.decode([i]) for i in ids)


def test_an_answer_stopped_inside_a_character_does_not_end_in_the_replacement_character(gpt2_tokenizer):
    from kgpt2.generation.engine import Request, Sampling

    ids = gpt2_tokenizer.encode("I smile 🦒 a lot")
    split = next(n for n in range(1, len(ids)) if gpt2_tokenizer.decode(ids[:n]).endswith("\ufffd"))
    request = Request([0], Sampling(), 100)
    request.text = gpt2_tokenizer.decode(ids[:split])
    shown = request.take_text()
    request.finish_reason = "cancelled"  # the user pressed Stop between the emoji's two tokens
    shown += request.take_text()
    assert shown == "I smile ", repr(shown)
