"""Generation: samplers, limits, end-of-text, seeds, streaming, templates, restore, no recompiles."""

import numpy as np
import pytest

from kgpt2.errors import UserError
from kgpt2.generate import Generator, Settings, filter_logits, render_prompt
from kgpt2.generation.sampling import sample

pytestmark = pytest.mark.backend

PROMPT = "The assert statement"


@pytest.fixture(scope="module")
def gen(loaded):
    model, tokenizer, _ = loaded
    return Generator(model, tokenizer)  # one per module: its programs compile once


def greedy(**kw):
    return Settings(sampler="greedy", **kw)


def test_greedy_is_deterministic_and_matches_kerashub(gen, loaded):
    import keras_hub

    model, tokenizer, _ = loaded
    ids = tokenizer.encode(PROMPT)
    ours = gen.generate_ids(ids, greedy(max_new_tokens=12))
    assert ours == gen.generate_ids(ids, greedy(max_new_tokens=12))
    # KerasHub's own greedy generation on the same model, no early stop.
    model.compile(sampler=keras_hub.samplers.GreedySampler())
    total = len(ids) + 12
    x = {"token_ids": np.zeros((1, total), "int32"), "padding_mask": np.zeros((1, total), bool)}
    x["token_ids"][0, :len(ids)], x["padding_mask"][0, :len(ids)] = ids, True
    theirs = [int(t) for t in np.asarray(model.generate(x, stop_token_ids=None)["token_ids"])[0, len(ids):]]
    assert ours == theirs[:len(ours)]
    if len(ours) < 12:  # stopped early: the next token was end-of-text
        assert theirs[len(ours)] == tokenizer.eos_id
    assert gen.generate(PROMPT, greedy(max_new_tokens=12)) == tokenizer.decode(ours)


def test_beam_search(gen, loaded):
    _, tokenizer, _ = loaded
    ids = tokenizer.encode(PROMPT)
    # KerasHub's BeamSampler with one beam is greedy search.
    assert gen.generate_ids(ids, Settings(sampler="beam", num_beams=1, max_new_tokens=6)) == \
        gen.generate_ids(ids, greedy(max_new_tokens=6))
    beams = gen.generate_ids(ids, Settings(sampler="beam", num_beams=3, max_new_tokens=6))
    assert len(beams) <= 6 and beams == gen.generate_ids(ids, Settings(sampler="beam", num_beams=3, max_new_tokens=6))
    assert "".join(gen.stream(PROMPT, Settings(sampler="beam", num_beams=3, max_new_tokens=6))) == tokenizer.decode(beams)


def _reference_support(logits, temperature, k, p):
    """Top-k then nucleus by sorting, in numpy (KerasHub TopPSampler(p, k) semantics)."""
    z = logits.astype("float64") / temperature
    probs = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    order = np.argsort(-probs, kind="stable")
    cum = np.cumsum(probs[order])
    nucleus = len(z) if p >= 1 else int(np.searchsorted(cum, p)) + 1  # smallest prefix reaching p
    return set(order[:min(k, nucleus)].tolist())


@pytest.mark.parametrize("temperature, k, p", [(1.0, 5, 1.0), (0.7, 50, 0.9), (1.5, 1000, 0.5), (1.0, 1000, 1.0), (2.0, 1, 0.9)])
def test_top_k_top_p_support_sets(temperature, k, p):
    import keras

    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(3, 1000)) * 3).astype("float32")
    kept = keras.ops.convert_to_numpy(filter_logits(logits, temperature, k, p)) > -1e8
    for row in range(3):
        assert set(np.flatnonzero(kept[row]).tolist()) == _reference_support(logits[row], temperature, k, p)
    # Many draws (one per row of a tiled batch) land only in the support, and cover it when small.
    row = np.repeat(logits[:1], 400, axis=0)
    support = _reference_support(logits[0], temperature, k, p)
    n = len(row)  # one seed per row: independent draws
    draws = keras.ops.convert_to_numpy(sample(row, np.zeros(n, bool), np.full(n, temperature, "float32"),
                                              np.full(n, k, "int32"), np.full(n, p, "float32"),
                                              np.arange(n, dtype="int32"), np.zeros(n, "int32")))
    assert set(draws.tolist()) <= support
    if len(support) <= 5:
        assert set(draws.tolist()) == support


def _compiled(fn):
    import keras

    if keras.backend.backend() == "jax":
        import jax
        return jax.jit(fn)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        return tf.function(fn, jit_compile=True)
    return fn


@pytest.mark.parametrize("temperature", [1e-5, 1e-10, 1e-20, 1e-30])
def test_a_tiny_temperature_samples_the_most_likely_token(temperature):
    """`temperature: 1e-10` (a client's way to say "greedy") drew a wrong token every time, whatever the seed:
    the compiled softmax of logits / 1e-10 dropped the top token from the top-k / top-p support."""
    import keras

    rng = np.random.default_rng(0)
    for excluded in (-1e9, -np.inf, np.finfo("float32").min):  # padded vocabulary entries, as models mask them
        logits = (rng.normal(size=(4, 512)) * 3).astype("float32")
        logits[:, 500:] = excluded
        for k, p in ((50, 1.0), (512, 0.9), (40, 0.95)):
            draw = _compiled(lambda x, t: sample(x, np.zeros(4, bool), t, np.full(4, k, "int32"),
                                                 np.full(4, p, "float32"), np.arange(4, dtype="int32"),
                                                 np.zeros(4, "int32")))
            drawn = keras.ops.convert_to_numpy(draw(logits, np.full(4, temperature, "float32")))
            assert drawn.tolist() == logits.argmax(-1).tolist(), (excluded, k, p)


def test_kerashub_top_p_draws_fall_in_our_support():
    import keras
    import keras_hub

    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(1, 300)) * 2).astype("float32")
    sampler = keras_hub.samplers.TopPSampler(p=0.8, k=20, temperature=0.9, seed=3)
    probs = sampler.compute_probabilities(np.repeat(logits, 300, axis=0))
    theirs = set(keras.ops.convert_to_numpy(sampler.get_next_token(probs)).tolist())
    ours = set(np.flatnonzero(keras.ops.convert_to_numpy(filter_logits(logits, 0.9, 20, 0.8))[0] > -1e8).tolist())
    assert theirs <= ours and len(theirs) >= len(ours) - 1


def test_seeds(gen, loaded):
    _, tokenizer, _ = loaded
    ids = tokenizer.encode(PROMPT)
    s = Settings(sampler="top_p", temperature=1.0, top_p=0.95, top_k=100, max_new_tokens=16, seed=7)
    assert gen.generate_ids(ids, s) == gen.generate_ids(ids, s)
    outs = {tuple(gen.generate_ids(ids, Settings(sampler="random", temperature=1.5, max_new_tokens=16, seed=seed)))
            for seed in range(4)}
    assert len(outs) >= 3  # different seeds sample differently
    # OpenAI's seeds are 64-bit: masked to 31 bits, 0, 2**31, 2**32 and -2**31 all drew seed 0's text
    wide = {tuple(gen.generate_ids(ids, Settings(sampler="random", temperature=1.5, max_new_tokens=16, seed=seed)))
            for seed in (0, 1 << 31, 1 << 32, -(1 << 31))}
    assert len(wide) >= 3


@pytest.mark.parametrize("settings", [greedy(max_new_tokens=20),
                                      Settings(sampler="top_k", top_k=20, temperature=1.2, max_new_tokens=20, seed=5)])
def test_stream_equals_generate(gen, loaded, settings):
    _, tokenizer, _ = loaded
    ids = tokenizer.encode(PROMPT)
    assert list(gen.stream_ids(ids, settings)) == gen.generate_ids(ids, settings)  # token for token
    assert "".join(gen.stream(PROMPT, settings)) == gen.generate(PROMPT, settings)


def test_limits(gen, loaded, caplog):
    _, tokenizer, cfg = loaded
    ids = tokenizer.encode(PROMPT)

    class NeverEnds:  # end-of-text never matches, so lengths are exact
        eos_id = -1
        decode = tokenizer.decode

    g = Generator(gen.model, NeverEnds())
    assert len(g.generate_ids(ids, greedy(max_new_tokens=7))) == 7
    assert len(g.generate_ids(ids, greedy(max_length=len(ids) + 5))) == 5
    assert len(g.generate_ids(ids, greedy(max_length=len(ids) + 5, max_new_tokens=9))) == 9  # new tokens win
    context = cfg.model.max_sequence_length
    with caplog.at_level("INFO", logger="kgpt2"):
        assert len(g.generate_ids(ids, greedy(max_new_tokens=10_000))) == context - len(ids)
        g.generate_ids(ids, greedy(max_new_tokens=10_000))
    # Capped without a word before; now said once per setting.
    assert [r.getMessage() for r in caplog.records] == [
        f"10000 new tokens asked, {context - len(ids)} fit: the model's context is {context} tokens, the prompt {len(ids)}"]
    with pytest.raises(UserError, match="must be shorter than"):
        g.generate_ids(list(range(1, context + 1)), greedy(max_new_tokens=1))


def test_stops_at_end_of_text(gen, loaded):
    _, tokenizer, _ = loaded
    ids = tokenizer.encode(PROMPT)
    free = gen.generate_ids(ids, greedy(max_new_tokens=8))
    stop = free[3]

    class StopsAt:  # pretend the 4th greedy token is end-of-text
        eos_id = stop
        decode = tokenizer.decode

    g = Generator(gen.model, StopsAt())
    assert g.generate_ids(ids, greedy(max_new_tokens=8)) == free[:free.index(stop)]
    assert list(g.stream_ids(ids, greedy(max_new_tokens=8))) == free[:free.index(stop)]


def test_no_recompilation_across_prompts_and_settings(gen):
    gen.generate("x", greedy(max_new_tokens=3))
    before = gen.compiles
    for prompt, s in [("The with statement", greedy(max_new_tokens=9)),
                      ("A", Settings(sampler="top_p", temperature=0.7, top_p=0.9, top_k=40, seed=1, max_new_tokens=5)),
                      ("if x:", Settings(sampler="top_k", temperature=1.3, top_k=7, seed=2, max_length=20)),
                      ("Lambda forms", Settings(sampler="random", temperature=0.9, seed=3, max_new_tokens=4))]:
        gen.generate(prompt, s)
        "".join(gen.stream(prompt, s))
    assert gen.compiles == before


def test_templates_and_bad_settings(gen):
    from kgpt2.generation.templates import format_prompt

    text = render_prompt("Name a colour.", "instruction")
    assert text == format_prompt("Name a colour.") and text.startswith("### Instruction:\n")
    assert text.endswith("### Response:\n") and render_prompt("abc") == "abc"
    assert (gen.generate("Name a colour.", greedy(max_new_tokens=4, template="instruction"))
            == gen.generate(text, greedy(max_new_tokens=4)))  # the template is applied, nothing else
    for bad, message in [(dict(sampler="nucleus"), "sampler must be one of"), (dict(template="chatml"), "template must be one of"),
                         (dict(temperature=0), "temperature"), (dict(top_p=1.5), "top_p"), (dict(top_k=0), "top_k")]:
        with pytest.raises(UserError, match=message):
            gen.generate("x", Settings(**bad))


def test_settings_from_config_defaults_are_the_seed_demo():
    from kgpt2.config import load_config

    s = Settings.from_config(load_config(None).generate, seed=4, top_k=None)
    assert (s.sampler, s.temperature, s.top_p, s.top_k, s.max_length, s.seed) == ("top_p", 0.8, 0.95, 50, 100, 4)


@pytest.mark.parametrize("lora", [True, False])
def test_restore_from_checkpoint_equals_the_in_memory_model(tmp_path, tiny_preset, pydoc_shards, lora, make_tiny_config):
    """A trained model's logits == those of the model rebuilt from its run and checkpoint."""
    import keras

    from kgpt2.config import save_config
    from kgpt2.data.batches import WindowBatches
    from kgpt2.data.shards import ShardSet
    from kgpt2.model.models import build_causal_lm
    from kgpt2.run import load_model
    from kgpt2.training.checkpoints import CheckpointManager
    from kgpt2.training.metrics import compile_lm

    cfg = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=r", f"lora.enabled={str(lora).lower()}", "lora.rank=2")
    keras.config.set_dtype_policy("float32")
    model = build_causal_lm(cfg)
    data = ShardSet(cfg.data.shards).split("train")
    batches = WindowBatches(data.tokens, 0, data.num_tokens, sequence_length=32, batch_size=8, seed=0, max_batches=3)
    x, _, _ = batches[0]
    before = keras.ops.convert_to_numpy(model(x))
    compile_lm(model, keras.optimizers.Adam(1e-2))
    for i in range(len(batches)):
        model.train_on_batch(*batches[i])
    trained = keras.ops.convert_to_numpy(model(x))
    save_config(cfg, cfg.run_dir / "config.json")
    CheckpointManager(cfg.run_dir).save(model, None, {"step": 3, "stage": 0, "stage_end": False})
    restored, _, _ = load_model(cfg.run_dir, "latest")
    assert np.abs(trained - before).max() > 1e-3  # training moved the logits
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(x)), trained, rtol=1e-5, atol=1e-5)


def test_a_request_is_two_launches_and_streaming_starts_at_the_prefill(gen, loaded):
    """`generate_ids`: one prefill launch, then one decode loop for the whole request; `stream_ids`: the
    prefill's token comes out before any decode launch (time to first token = the prefill)."""
    from kgpt2.generate import STREAM_STEPS

    _, tokenizer, _ = loaded
    ids, s = tokenizer.encode(PROMPT), greedy(max_new_tokens=20)
    programs = gen.engine(len(ids) + 20).programs
    launches, prefill, decode = [], programs.prefill, programs.decode
    programs.prefill = lambda *a, **kw: (launches.append("prefill"), prefill(*a, **kw))[1]
    programs.decode = lambda *a: (launches.append("decode"), decode(*a))[1]
    try:
        out = gen.generate_ids(ids, s)
        assert launches == ["prefill", "decode"]
        launches.clear()
        stream = gen.stream_ids(ids, s)
        assert next(stream) == out[0] and launches == ["prefill"]
        assert [out[0]] + list(stream) == out
        assert launches.count("decode") <= -(-19 // STREAM_STEPS)
    finally:
        del programs.prefill, programs.decode  # the class's methods again


def _greedy_kerashub(model, ids, new):
    total = len(ids) + new
    x = {"token_ids": np.zeros((1, total), "int32"), "padding_mask": np.zeros((1, total), bool)}
    x["token_ids"][0, :len(ids)], x["padding_mask"][0, :len(ids)] = ids, True
    model.compile(sampler="greedy")
    return [int(t) for t in np.asarray(model.generate(x, stop_token_ids=None)["token_ids"])[0, len(ids):]]


@pytest.mark.parametrize("weights", ["int8", "bfloat16"])
def test_int8_and_bfloat16_weights(tiny_run, loaded, weights):
    """`generate.weights`: the engine's greedy tokens on int8 / bfloat16 weights equal keras-hub's greedy
    generate on the same weights, token for token. Against float32 the tolerance is stated here: the
    next-token argmax, teacher-forced on float32's greedy tokens, agrees at >= 90% of positions. On a JAX
    CPU "bfloat16" is float32 arithmetic on weights rounded to bfloat16, decoded from bfloat16 copies."""
    import keras

    from kgpt2.generate import load_for_generation
    from kgpt2.generation.decoding import on_jax_cpu

    model, tokenizer, _ = loaded

    class NeverEnds:
        eos_id = -1
        decode = tokenizer.decode

    quantised, _, _ = load_for_generation(tiny_run, "latest", weights)
    if weights == "bfloat16" and on_jax_cpu():  # a float32 model holding bfloat16 values, decoded from bfloat16
        rounded = keras.ops.cast(keras.ops.cast(quantised.weights[0], "bfloat16"), "float32")
        assert all(str(v.dtype) == "float32" for v in quantised.weights)
        assert np.array_equal(keras.ops.convert_to_numpy(rounded), keras.ops.convert_to_numpy(quantised.weights[0]))
        assert not np.array_equal(keras.ops.convert_to_numpy(rounded), keras.ops.convert_to_numpy(model.weights[0]))
        assert Generator(quantised, NeverEnds()).engine(64).programs.blocks.bfloat16_products
    else:
        assert {"int8": "int8", "bfloat16": "bfloat16"}[weights] in {str(v.dtype) for v in quantised.weights}
    ours, reference = Generator(quantised, NeverEnds()), Generator(model, NeverEnds())
    agree = total = 0
    for prompt in ["The assert statement", "Lambda forms are", "if x:", "class definitions"]:
        ids = tokenizer.encode(prompt)
        tokens = ours.generate_ids(ids, greedy(max_new_tokens=12))
        assert tokens == _greedy_kerashub(quantised, ids, 12)
        float32 = reference.generate_ids(ids, greedy(max_new_tokens=12))
        x = np.array([ids + float32], "int32")
        logits = keras.ops.convert_to_numpy(quantised({"token_ids": x, "padding_mask": np.ones_like(x, bool)}))
        agree += int((logits[0, len(ids) - 1:-1].argmax(-1) == np.array(float32)).sum())
        total += len(float32)
    assert agree >= 0.9 * total, f"{agree} of {total}"
