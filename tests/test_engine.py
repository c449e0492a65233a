"""The batched engine: batched == alone, joins and leaves mid-way, cancellation, stop strings, no recompiles."""

import threading

import numpy as np
import pytest

from kgpt2.errors import UserError
from kgpt2.generation.engine import Engine, Sampling

pytestmark = pytest.mark.backend

PROMPTS = ["The assert statement", "if x:", "Lambda forms are", "The with statement is used to wrap",
           "A", "class definitions", "import"]
SAMPLED = [Sampling(greedy=False, temperature=1.3, top_k=40, top_p=0.9, seed=11),
           Sampling(greedy=False, temperature=0.8, seed=3)]


@pytest.fixture(scope="module")
def engine(loaded):
    model, tokenizer, _ = loaded
    return Engine(model, tokenizer, slots=4, steps_per_launch=8)  # the tiny model's context: 64


def run(engine, requests, max_steps=500):
    for _ in range(max_steps):  # bounded: a bug must not hang the suite
        if all(r.finished for r in requests):
            return requests
        engine.step()
    raise AssertionError("requests did not finish")


def alone(engine, ids, sampling, total, stop=()):
    request = engine.submit(ids, sampling, total, stop)
    run(engine, [request])
    return request


def test_batched_equals_alone_with_joins_and_leaves(engine, loaded):
    _, tokenizer, _ = loaded
    cases = [(tokenizer.encode(p), Sampling() if i % 3 else SAMPLED[i % 2], len(tokenizer.encode(p)) + 8 + 3 * i)
             for i, p in enumerate(PROMPTS)]
    solo = [alone(engine, *case).tokens for case in cases]
    # 7 requests on 4 slots, arriving in three waves while others decode.
    first = [engine.submit(*case) for case in cases[:3]]
    engine.step(2)
    second = [engine.submit(*case) for case in cases[3:5]]
    engine.step(1)
    third = [engine.submit(*case) for case in cases[5:]]
    batched = run(engine, first + second + third)
    assert [r.tokens for r in batched] == solo
    assert all(r.finish_reason in ("stop", "length") for r in batched)
    assert any(len(t) > 4 for t in solo)  # not trivially short


def test_greedy_matches_kerashub(engine, loaded):
    import keras_hub

    model, tokenizer, _ = loaded
    ids = tokenizer.encode(PROMPTS[0])
    ours = alone(engine, ids, Sampling(), len(ids) + 10).tokens
    model.compile(sampler=keras_hub.samplers.GreedySampler())
    total = len(ids) + 10
    x = {"token_ids": np.zeros((1, total), "int32"), "padding_mask": np.zeros((1, total), bool)}
    x["token_ids"][0, :len(ids)], x["padding_mask"][0, :len(ids)] = ids, True
    theirs = [int(t) for t in np.asarray(model.generate(x, stop_token_ids=None)["token_ids"])[0, len(ids):]]
    assert ours == theirs[:len(ours)]


def test_cancel_frees_the_slot(loaded):
    model, tokenizer, _ = loaded

    class NeverEnds:  # end-of-text never matches: requests run to their limit
        eos_id = -1
        decode = tokenizer.decode

    engine = Engine(model, NeverEnds(), slots=2, steps_per_launch=4)
    ids = tokenizer.encode(PROMPTS[1])
    long = [engine.submit(ids, Sampling(), 60) for _ in range(2)]
    waiting = engine.submit(ids, Sampling(), len(ids) + 5)
    engine.step()
    assert engine.rows == long and not waiting.tokens  # both slots taken, the third waits
    long[0].cancel()
    engine.step(1)
    assert long[0].finish_reason == "cancelled" and engine.rows[0] is waiting and len(waiting.tokens) == 2
    run(engine, [waiting])
    assert len(waiting.tokens) == 5 and waiting.finish_reason == "length" and not long[1].finished
    long[1].cancel()
    engine.step()
    assert engine.rows == [None, None] and engine.busy == 0


def test_stop_strings_and_streamed_text(engine, loaded):
    _, tokenizer, _ = loaded
    ids = tokenizer.encode(PROMPTS[0])
    free = alone(engine, ids, Sampling(), len(ids) + 12)
    assert len(free.text) > 6
    stop = free.text[3:6]
    cut = alone(engine, ids, Sampling(), len(ids) + 12, stop=[stop])
    assert cut.text == free.text[:free.text.find(stop)] and cut.finish_reason == "stop"
    # Text taken piece by piece while decoding, one token per launch, adds up to the whole.
    request = engine.submit(ids, Sampling(), len(ids) + 12, stop=[stop])
    pieces = []
    for _ in range(100):
        engine.step(1)
        pieces.append(request.take_text())
        if request.finished:
            break
    assert "".join(pieces) == cut.text and stop not in "".join(pieces)


def test_no_recompilation_across_requests_and_settings(engine, loaded):
    _, tokenizer, _ = loaded
    alone(engine, tokenizer.encode("x"), Sampling(), 20)
    run(engine, [engine.submit(tokenizer.encode("y"), SAMPLED[0], 20) for _ in range(3)])
    before = engine.compiles
    settings = [Sampling(), *SAMPLED, Sampling(greedy=False, temperature=0.5, top_k=3, seed=99)]
    requests = [engine.submit(tokenizer.encode(p), settings[i % 4], len(tokenizer.encode(p)) + 5 + i, stop=["zz"])
                for i, p in enumerate(PROMPTS)]
    run(engine, requests)
    assert engine.compiles == before


def test_seeds_decide_the_draws(engine, loaded):
    _, tokenizer, _ = loaded
    ids = tokenizer.encode(PROMPTS[2])
    draws = {tuple(alone(engine, ids, Sampling(greedy=False, temperature=2.0, seed=s), len(ids) + 10).tokens)
             for s in range(4)}
    assert len(draws) >= 3


def test_background_thread_and_bad_requests(loaded):
    model, tokenizer, _ = loaded
    engine = Engine(model, tokenizer, slots=2, cache_length=64, steps_per_launch=4).start()
    try:
        ids = tokenizer.encode(PROMPTS[3])
        done = threading.Event()
        request = engine.submit(ids, Sampling(), len(ids) + 6, listener=lambda: request.finished and done.set())
        assert done.wait(120)
        assert request.tokens == alone(Engine(model, tokenizer, slots=1), ids, Sampling(), len(ids) + 6).tokens
        with pytest.raises(UserError, match="must fit"):
            engine.submit(ids, Sampling(), 65)
        with pytest.raises(UserError, match="empty"):
            engine.submit([], Sampling(), 5)
    finally:
        engine.close()


def test_chunked_decode_and_batched_prefill_equal_one_step_loops(engine, loaded):
    """Chunks of 4 steps (the GPU's fixed-length inner loops, here on CPU) and prompts prefilled together
    give the same tokens as one-step loops and one prompt at a time, greedy and sampled."""
    model, tokenizer, _ = loaded
    chunked = Engine(model, tokenizer, slots=4, steps_per_launch=8, chunk=4)
    assert (chunked.programs.chunk, engine.programs.chunk, chunked.steps_per_launch) == (4, 1, 8)
    cases = [(tokenizer.encode(p), SAMPLED[i % 2] if i % 2 else Sampling(), len(tokenizer.encode(p)) + 6 + 2 * i)
             for i, p in enumerate(PROMPTS[:6])]
    solo = [alone(engine, *case).tokens for case in cases]
    together = [chunked.submit(*case) for case in cases[:3]]
    chunked.step(0)  # three prompts, one prefill launch (rows padded to 4)
    assert chunked.compiles == 1 and all(len(r.tokens) == 1 for r in together)
    chunked.step(3)  # a launch that ends inside a chunk
    assert all(len(r.tokens) == 4 or r.finished for r in together)
    together += [chunked.submit(*case) for case in cases[3:]]
    assert [r.tokens for r in run(chunked, together)] == solo


def test_warm_up_compiles_all_that_serving_launches(loaded):
    model, tokenizer, _ = loaded
    engine = Engine(model, tokenizer, slots=4, steps_per_launch=8)
    engine.warm_up()
    assert engine.compiles == 2 + 3  # two decode loops; prefills of 1, 2 and 4 rows
    settings = [Sampling(), *SAMPLED]
    first = [engine.submit(tokenizer.encode(p), settings[i % 3], len(tokenizer.encode(p)) + 4 + i)
             for i, p in enumerate(PROMPTS[:5])]
    engine.step(2)
    later = [engine.submit(tokenizer.encode(p), settings[i % 2], len(tokenizer.encode(p)) + 5) for i, p in enumerate(PROMPTS[5:])]
    run(engine, first + later)
    assert engine.compiles == 5
    assert [r.tokens for r in first[:1]] == [alone(engine, tokenizer.encode(PROMPTS[0]), Sampling(), first[0].total).tokens]


def test_launches_run_longer_while_every_slot_is_taken(loaded):
    model, tokenizer, _ = loaded

    class NeverEnds:
        eos_id = -1
        decode = tokenizer.decode

    engine = Engine(model, NeverEnds(), slots=2, steps_per_launch=4, full_steps_per_launch=12)
    ids = tokenizer.encode(PROMPTS[1])
    first = engine.submit(ids, Sampling(), 60)
    engine.step()  # a free slot: a short launch, so a newcomer waits at most 4 steps
    assert len(first.tokens) == 1 + 4
    second = engine.submit(ids, Sampling(), 60)
    engine.step()  # every slot taken: up to 12 steps (a row's end would stop it sooner)
    assert (len(first.tokens), len(second.tokens)) == (5 + 12, 1 + 12)
    third = engine.submit(ids, Sampling(), len(ids) + 3)
    run(engine, [first])  # its end stops a long launch: the next step admits the third
    assert not second.finished and len(second.tokens) < 60 - len(ids)
    engine.step(0)
    assert engine.rows[0] is third
    run(engine, [second, third])
    assert len(third.tokens) == 3 and second.finish_reason == "length"
