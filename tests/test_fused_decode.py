"""kgpt2.generation.fused_decode's decoder blocks against keras-hub's own layers: the same scores and tokens."""

import numpy as np
import pytest

from kgpt2.generation.decoding import Programs
from kgpt2.generation.engine import Engine, Sampling
from kgpt2.generation.fused_decode import FusedBlocks

pytestmark = pytest.mark.backend

PROMPTS = ["The assert statement", "if x:"]
SAMPLED = Sampling(greedy=False, temperature=1.1, top_k=20, top_p=0.9, seed=5)


def decoded(model, tokenizer, slots: int, blocks: str, gemv: bool = False, one_pass: bool = False):
    """Each prompt greedy and sampled, 12 new tokens with their top-3 log-probabilities, on `slots` rows."""
    programs = Programs(model, slots, 64, 8, blocks=blocks)
    if blocks == "fused":  # the forms kgpt2 picks on a JAX GPU (one-row products, one-pass norm), forced here
        programs.blocks = FusedBlocks(model.backbone, programs.variables, gemv=gemv, one_pass_norm=one_pass)
    engine = Engine(model, tokenizer, slots=slots, cache_length=64, steps_per_launch=8, programs=programs)
    requests = [engine.submit(tokenizer.encode(p), s, len(tokenizer.encode(p)) + 12, logprobs=3)
                for p in PROMPTS for s in (Sampling(), SAMPLED)]
    for _ in range(200):
        if all(r.finished for r in requests):
            break
        engine.step()
    assert all(r.finished for r in requests)
    return programs, requests


@pytest.mark.parametrize("slots, gemv, one_pass", [(1, False, False), (1, True, True), (2, False, True)])
def test_fused_blocks_score_like_keras_hub_layers(loaded, slots, gemv, one_pass):
    model, tokenizer, _ = loaded
    programs, fused = decoded(model, tokenizer, slots, "fused", gemv, one_pass)
    reference_programs, reference = decoded(model, tokenizer, slots, "keras-hub")
    assert reference_programs.blocks is None
    for ours, theirs in zip(fused, reference):
        assert ours.tokens == theirs.tokens and len(ours.tokens) >= 4
        ours_lp = np.array([[s[0]] + [v for _, v in s[1]] for s in ours.scores])
        theirs_lp = np.array([[s[0]] + [v for _, v in s[1]] for s in theirs.scores])
        assert [[i for i, _ in s[1]] for s in ours.scores] == [[i for i, _ in s[1]] for s in theirs.scores]
        # float32: the same products in another order (a 1% change of the attention scale moves them 1e-5)
        np.testing.assert_allclose(ours_lp, theirs_lp, atol=2e-6)


@pytest.mark.parametrize("rows, gemv, one_pass", [(2, False, False), (1, True, True), (2, False, True)])
def test_one_step_matches_keras_hub_layers_on_sharp_random_weights(rows, gemv, one_pass):
    """One decode step on weights drawn wide (peaked attention and logits, unlike a fresh model's): the
    fused blocks' logits and caches against keras-hub's layers, rows at different positions of a ring."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(1)
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=97, num_layers=2, num_heads=4, hidden_dim=32,
                                             intermediate_dim=64, max_sequence_length=32)
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    rng = np.random.default_rng(0)
    for v in model.variables:
        v.assign(rng.normal(1.0 if "gamma" in v.path else 0.0, 0.3, v.shape).astype("float32"))
    reference = Programs(model, rows, 16, 4, blocks="keras-hub")
    fused = Programs(model, rows, 16, 4, blocks="fused")
    fused.blocks.gemv, fused.blocks.one_pass_norm = gemv, one_pass
    values = [v.value for v in reference.variables]
    caches = [rng.normal(0, 1, (rows, 2, 16, 4, 8)).astype("float32") for _ in range(2)]
    last, pos = np.array([5, 60][:rows], "int32"), np.array([6, 11][:rows], "int32")
    offsets = (np.arange(16)[None, :] - np.array([[3], [14]][:rows])) % 16  # each row's ring starts elsewhere
    t = 9
    theirs_caches, theirs = reference._step(values, caches, last, pos, offsets.astype("int32"), t)
    ours_caches, ours = fused._step(values, caches, last, pos, offsets.astype("int32"), t,
                                    fused.blocks.fuse(values, rows))
    theirs = np.asarray(theirs)
    assert theirs.std() > 1.0  # logits spread enough for a wrong attention or norm to show
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=1e-4)
    for a, b in zip(ours_caches, theirs_caches):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def _jax_only():
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("bfloat16 products are a JAX CPU form (XLA optimization barriers)")


def _rounded_and_flagged(model):
    """As kgpt2.generate.load_for_generation loads weights "bfloat16" on a JAX CPU."""
    from kgpt2.generate import round_to_bfloat16
    from kgpt2.generation.fused_decode import BFLOAT16_PRODUCTS

    round_to_bfloat16(model)
    setattr(model, BFLOAT16_PRODUCTS, True)
    return model


@pytest.mark.parametrize("slots", [1, 2])
def test_bfloat16_products_score_like_keras_hub_on_the_rounded_weights(tiny_run, loaded, slots):
    """Weights "bfloat16" on a JAX CPU: the decode steps' products read bfloat16 [out, in] copies of weights
    that hold bfloat16 values, in float32. keras-hub's float32 layers on the same weights are the oracle: the
    same tokens (greedy and sampled) and log-probabilities to float32 rounding."""
    _jax_only()
    from kgpt2.run import load_model

    _, tokenizer, _ = loaded
    model = _rounded_and_flagged(load_model(tiny_run, "latest")[0])
    programs, ours = decoded(model, tokenizer, slots, "auto")
    # several rows keep float32 products (on the same bfloat16-valued weights): there they are faster
    assert programs.blocks.bfloat16_products == (slots == 1) and programs.keeps_weights
    _, theirs = decoded(model, tokenizer, slots, "keras-hub")
    for a, b in zip(ours, theirs):
        assert a.tokens == b.tokens and len(a.tokens) >= 4
        np.testing.assert_allclose([s[0] for s in a.scores], [s[0] for s in b.scores], atol=2e-6)


def test_bfloat16_products_step_on_sharp_random_weights():
    """One decode step with bfloat16 products, weights drawn wide and rounded: logits (the padded vocabulary's
    pad columns masked, as the model's own reverse embedding does) and caches against keras-hub's layers."""
    _jax_only()
    import keras
    import keras_hub

    from kgpt2.model.models import pad_vocabulary

    keras.utils.set_random_seed(1)
    backbone = pad_vocabulary(keras_hub.models.GPT2Backbone(
        vocabulary_size=97, num_layers=2, num_heads=4, hidden_dim=32, intermediate_dim=64, max_sequence_length=32), 64)
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    rng = np.random.default_rng(0)
    for v in model.variables:
        v.assign(rng.normal(1.0 if "gamma" in v.path else 0.0, 0.3, v.shape).astype("float32"))
    _rounded_and_flagged(model)
    reference, half = Programs(model, 2, 16, 4, blocks="keras-hub"), Programs(model, 2, 16, 4)
    assert not half.blocks.bfloat16_products and Programs(model, 1, 16, 4).blocks.bfloat16_products
    half.blocks = FusedBlocks(model.backbone, half.variables, bfloat16_products=True)  # two rows, forced
    values = [v.value for v in reference.variables]
    caches = [rng.normal(0, 1, (2, 2, 16, 4, 8)).astype("float32") for _ in range(2)]
    last, pos = np.array([5, 60], "int32"), np.array([6, 11], "int32")
    offsets = ((np.arange(16)[None, :] - np.array([[3], [14]])) % 16).astype("int32")
    theirs_caches, theirs = reference._step(values, caches, last, pos, offsets, 9)
    kept = half.blocks.kept(values)
    ours_caches, ours = half._step(values, caches, last, pos, offsets, 9, half.blocks.fuse(values, 2, kept), kept[1])
    theirs, ours = np.asarray(theirs), np.asarray(ours)
    assert theirs.shape == ours.shape == (2, 128) and (ours[:, 97:] < -1e8).all()  # pad columns masked
    assert theirs[:, :97].std() > 1.0
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    for a, b in zip(ours_caches, theirs_caches):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_auto_uses_fused_blocks_on_plain_weights_and_keras_hub_on_int8(tiny_run, loaded):
    from kgpt2.run import load_model

    model, tokenizer, _ = loaded
    assert Programs(model, 1, 64, 8).blocks is not None
    assert Programs(model, 1, 64, 8, blocks="keras-hub").blocks is None
    with pytest.raises(ValueError, match="auto, fused or keras-hub"):
        Programs(model, 1, 64, 8, blocks="fast")
    # An int8 copy (keras' own quantisation) keeps keras-hub's layers, and still generates.
    quantised, _, _ = load_model(tiny_run, "latest")
    quantised.quantize("int8")
    assert not FusedBlocks.supports(quantised.backbone)
    assert Programs(quantised, 1, 64, 8).blocks is None
    with pytest.raises(ValueError, match="plain GPT-2 weights"):
        Programs(quantised, 1, 64, 8, blocks="fused")
    engine = Engine(quantised, tokenizer, slots=1, cache_length=64, steps_per_launch=8)
    request = engine.submit(tokenizer.encode(PROMPTS[0]), Sampling(), 12)
    for _ in range(50):
        if request.finished:
            break
        engine.step()
    assert request.finished and request.tokens


@pytest.mark.parametrize("adapter", ["keras", "kgpt2 lora", "kgpt2 dora"])
def test_adapted_layers_keep_keras_hub_blocks(adapter):
    import keras_hub

    from kgpt2.config_sections import LoraConfig
    from kgpt2.model.adapters import enable_lora

    b = keras_hub.models.GPT2Backbone(vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8,
                                      intermediate_dim=16, max_sequence_length=16)
    assert FusedBlocks.supports(b)
    if adapter == "keras":
        b.enable_lora(2)
    else:  # kgpt2's own adapter classes (what a LoRA run's model holds when it generates)
        enable_lora(b, LoraConfig(enabled=True, rank=2, use_dora=adapter.endswith("dora")))
    assert not FusedBlocks.supports(b)


@pytest.mark.parametrize("bfloat16", [False, True])
def test_kept_weights_follow_the_model_weights(pydoc_tokenizer, bfloat16):
    """On a JAX CPU the blocks' derived weights (the query/key/value concatenation; with bfloat16 weights the
    bfloat16 products) are kept across launches (`Programs.kept_weights`): new weights (a restore, a training
    step) must never decode with the old ones, and two weight versions alternating on one set of programs (the
    demo's base and fine-tuned engines) each keep theirs."""
    import keras
    import keras_hub

    from kgpt2.generate import round_to_bfloat16
    from kgpt2.generation.fused_decode import BFLOAT16_PRODUCTS

    keras.utils.set_random_seed(2)
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=pydoc_tokenizer.vocab_size, num_layers=2, num_heads=4,
                                             hidden_dim=32, intermediate_dim=64, max_sequence_length=32)
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)

    def draw(seed):  # weights drawn wide, so that greedy tokens depend on them
        rng = np.random.default_rng(seed)
        for v in model.variables:
            v.assign(rng.normal(1.0 if "gamma" in v.path else 0.0, 0.3, v.shape).astype("float32"))
        if bfloat16:
            round_to_bfloat16(model)

    setattr(model, BFLOAT16_PRODUCTS, bfloat16)
    ids = pydoc_tokenizer.encode(PROMPTS[0])

    def greedy(programs, weights=None):
        engine = Engine(model, pydoc_tokenizer, slots=1, cache_length=32, steps_per_launch=4, weights=weights,
                        programs=programs)
        request = engine.submit(ids, Sampling(), len(ids) + 10)
        while not request.finished:
            engine.step()
        return request.tokens

    draw(0)
    programs = Programs(model, 1, 32, 4, blocks="fused")
    assert programs.keeps_weights == (keras.backend.backend() == "jax")
    assert programs.blocks.bfloat16_products == (bfloat16 and keras.backend.backend() == "jax")
    builds = []
    build = programs._build_kept
    programs._build_kept = lambda values: builds.append(1) or build(values)
    first, old = greedy(programs), [np.array(v.value) for v in programs.variables]
    draw(1)  # new arrays in every variable, as a restore gives
    second = greedy(programs)
    assert second == greedy(Programs(model, 1, 32, 4, blocks="keras-hub")) and second != first
    # the old weights as another engine's (a copy): a third version; then both alternate
    assert greedy(programs, lambda: old) == first
    assert greedy(programs) == second and greedy(programs, lambda: old) == first
    # three launches a request (4 steps each): built once per version where kept (the last two)
    assert len(builds) == (3 if programs.keeps_weights else 0)
    if programs.keeps_weights:  # the model's programs for another cache length use what was kept
        values = [v.value for v in model.variables]
        assert Programs(model, 1, 16, 4, blocks="fused").kept_weights(values) is programs.kept_weights(values)
        assert len(builds) == 3
