"""The exported generation_config.json carries the run's `[generate]` settings in transformers' names.

It held only the end-of-text ids, so `model.generate()` in transformers decoded greedily, 20 new tokens, whatever
the run's sampler. The oracle is transformers itself: its GenerationConfig as loaded, and `generate()` without
arguments. (The same end to end through `kgpt2 export`: tests/test_export_quantised.py.)

Also its padding id (none was written: transformers 4.x warned "Setting `pad_token_id` to `eos_token_id`" on every
`generate`), greedy decoding of the export against `kgpt2 generate --sampler greedy`, and where transformers' top-p
keeps other tokens than kgpt2's: what transformers' own `generate` keeps (its processed `scores`) against
kgpt2.generation.sampling.filter_logits on the same logits, and the line `kgpt2 export` prints about it.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.backend

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SAMPLERS = {  # kgpt2's [generate] -> what transformers must load
    "top_p": ({"sampler": "top_p", "top_p": 0.9, "top_k": 40, "temperature": 0.7, "max_length": 60},
              {"do_sample": True, "top_p": 0.9, "top_k": 40, "temperature": 0.7, "max_length": 60}),
    "top_k": ({"sampler": "top_k", "top_k": 5, "temperature": 1.3, "max_new_tokens": 12},
              {"do_sample": True, "top_k": 5, "top_p": 1.0, "temperature": 1.3, "max_new_tokens": 12}),
    "random": ({"sampler": "random", "temperature": 0.9, "max_new_tokens": 7},
               {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 0.9, "max_new_tokens": 7}),
    "greedy": ({"sampler": "greedy", "max_new_tokens": 5}, {"do_sample": False, "max_new_tokens": 5}),
    "beam": ({"sampler": "beam", "num_beams": 3, "max_new_tokens": 4},
             {"do_sample": False, "num_beams": 3, "max_new_tokens": 4}),
}


@pytest.fixture(scope="module")
def plain_backbone(tiny_preset):
    from kgpt2.config import ModelConfig
    from kgpt2.model.adapters import merged_backbone
    from kgpt2.model.models import build_backbone

    return merged_backbone(build_backbone(ModelConfig(preset=str(tiny_preset))))


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_transformers_loads_the_runs_sampler(sampler, plain_backbone, pydoc_tokenizer, tmp_path):
    from kgpt2.config_sections import GenerateConfig
    from kgpt2.export import write_hf

    ours, theirs = SAMPLERS[sampler]
    out = write_hf(plain_backbone, pydoc_tokenizer, tmp_path / "hf", "plain", GenerateConfig(**ours))
    model = transformers.GPT2LMHeadModel.from_pretrained(out)
    loaded = model.generation_config
    assert {k: getattr(loaded, k) for k in theirs} == pytest.approx(theirs)
    assert (loaded.eos_token_id, loaded.bos_token_id) == (pydoc_tokenizer.eos_id, pydoc_tokenizer.eos_id)
    if "max_new_tokens" in theirs and sampler != "random":  # generate() with no arguments decodes that many
        prompt = torch.tensor([pydoc_tokenizer.encode("The with statement")])
        torch.manual_seed(0)
        made = model.generate(prompt, attention_mask=torch.ones_like(prompt), min_new_tokens=theirs["max_new_tokens"],
                              pad_token_id=pydoc_tokenizer.eos_id)
        assert made.shape[1] == prompt.shape[1] + theirs["max_new_tokens"]


def test_without_settings_only_the_token_ids_are_written(plain_backbone, pydoc_tokenizer, tmp_path):
    import json

    from kgpt2.export import write_hf

    out = write_hf(plain_backbone, pydoc_tokenizer, tmp_path / "hf")
    eos = pydoc_tokenizer.eos_id
    assert json.loads((out / "generation_config.json").read_text()) == \
        {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}


PROMPT = "The with statement"


class RecordTransformersLogs:
    """Everything transformers logs or warns inside the block (its logger does not propagate to the root)."""

    def __enter__(self):
        import logging
        import warnings

        self.messages, self._warnings = [], warnings.catch_warnings(record=True)
        self.caught = self._warnings.__enter__()
        warnings.simplefilter("always")
        self.handler = logging.Handler(logging.DEBUG)
        self.handler.emit = lambda record: self.messages.append(record.getMessage())
        logging.getLogger("transformers").addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        import logging

        logging.getLogger("transformers").removeHandler(self.handler)
        self.messages += [str(w.message) for w in self.caught]
        self._warnings.__exit__(*exc)


def test_greedy_generate_of_the_export_is_kgpt2s_and_needs_no_padding_id(tiny_run, tmp_path, kgpt2_cli):
    """generation_config.json had no pad_token_id: transformers 4.x logged "Setting `pad_token_id` to
    `eos_token_id`" on every generate (5.x fills it in silently). GPT-2 has no padding token; transformers pads
    it with the end-of-text token, which the export now says."""
    assert kgpt2_cli("-q", "export", "--run", tiny_run, "--to", "hf", "hf", cwd=tmp_path).returncode == 0
    ours = kgpt2_cli("generate", "--run", tiny_run, "--prompt", PROMPT, "--sampler", "greedy",
                     "--max-new-tokens", "12")
    assert ours.returncode == 0, ours.stderr
    hf = tmp_path / "hf"
    loaded = transformers.GenerationConfig.from_pretrained(hf)
    assert loaded.pad_token_id == loaded.eos_token_id == loaded.bos_token_id is not None
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf)
    model = transformers.GPT2LMHeadModel.from_pretrained(hf).eval()
    prompt = tokenizer(PROMPT, return_tensors="pt")
    with RecordTransformersLogs() as logs, torch.no_grad():
        made = model.generate(**prompt, do_sample=False, max_new_tokens=12)
    assert not [m for m in logs.messages if "pad_token_id" in m], logs.messages
    text = tokenizer.decode(made[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert ours.stdout == PROMPT + text + "\n"


class FixedLogits:
    """A logits processor that hands transformers' samplers `logits` instead of the model's (custom processors
    run before the temperature, top-k and top-p warpers that the generation config sets up)."""

    def __init__(self, logits):
        self.logits = torch.tensor(logits)

    def __call__(self, input_ids, scores):
        return self.logits.to(scores.dtype).expand_as(scores).clone()


def kept_by_transformers(model, logits) -> np.ndarray:
    """The tokens `model.generate()` (its generation_config.json as loaded) may sample after `logits`."""
    prompt = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), logits_processor=[FixedLogits(logits)],
                             max_new_tokens=1, min_new_tokens=1, output_scores=True, return_dict_in_generate=True)
    return torch.isfinite(out.scores[0][0]).numpy()


def kept_by_kgpt2(settings, logits) -> np.ndarray:
    from kgpt2.generate import Settings
    from kgpt2.generation.sampling import NEG, filter_logits

    s = Settings.from_config(settings).sampling()
    return np.asarray(filter_logits(logits[None], s.temperature, s.top_k, s.top_p))[0] > NEG / 2


def peaked(vocabulary: int, temperature: float) -> np.ndarray:
    """Logits whose probabilities after `temperature` are 0.5, 0.3, 0.12 and 0.08 spread over the rest."""
    probs = np.full(vocabulary, 0.08 / (vocabulary - 3))
    probs[:3] = 0.5, 0.3, 0.12
    return (np.log(probs) * temperature).astype("float32")


@pytest.mark.parametrize("sampler", ["top_p", "top_k", "random"])
def test_where_transformers_keeps_other_tokens_the_export_says_so(sampler, plain_backbone, pydoc_tokenizer, tmp_path):
    from kgpt2.config_sections import GenerateConfig
    from kgpt2.export import generation_difference, write_hf

    settings = GenerateConfig(sampler=sampler, top_k=3, top_p=0.85, temperature=0.7)
    model = transformers.GPT2LMHeadModel.from_pretrained(write_hf(plain_backbone, pydoc_tokenizer, tmp_path / "hf",
                                                                  "plain", settings))
    vocabulary = plain_backbone.vocabulary_size
    flat = np.random.default_rng(0).normal(size=vocabulary).astype("float32")
    said = generation_difference(settings, vocabulary)
    kept = {name: (kept_by_transformers(model, logits), kept_by_kgpt2(settings, logits))
            for name, logits in (("peaked", peaked(vocabulary, 0.7)), ("flat", flat))}
    for theirs, ours in kept.values():
        assert not (theirs & ~ours).any()  # never a token kgpt2 would not sample
        assert sampler == "top_p" or ((theirs == ours).all() and said is None)
    if sampler == "top_p":  # the nucleus of the top 3 renormalised (0.54, 0.87) stops a token before kgpt2's
        theirs, ours = kept["peaked"]
        assert (ours.sum(), theirs.sum()) == (3, 2)
        assert "top_p=0.85 to the 3 tokens top_k kept" in said and "never from others" in said


def test_export_says_once_that_its_top_p_is_transformers(tiny_run, tmp_path, kgpt2_cli):
    """The run's sampler is the default top_p (top_k 50 of 512 tokens): the export wrote both cuts and said
    nothing about transformers applying them differently."""
    import json

    done = kgpt2_cli("export", "--run", tiny_run, "--to", "hf", "hf", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # (the tiny run's max_length 100 past its 64-token context has its own line: tests/test_journey_wheel_export.py)
    said = [line for line in done.stderr.splitlines() if "generation_config.json: transformers" in line]
    assert said == ["kgpt2: generation_config.json: transformers applies top_p=0.95 to the 50 tokens top_k kept, "
                    "renormalised, kgpt2 to the whole distribution, so model.generate() can sample from fewer "
                    "tokens than kgpt2 generate (never from others) where the top-50 cut drops probability"]
    saved = json.loads((tmp_path / "hf" / "kgpt2_export.json").read_text())
    assert saved["generation_differs"] == said[0].removeprefix("kgpt2: ")
    done = kgpt2_cli("export", "--run", tiny_run, "--to", "preset", "preset", cwd=tmp_path)
    assert done.returncode == 0 and "generation_config" not in done.stderr  # a preset has none
    assert json.loads((tmp_path / "preset" / "kgpt2_export.json").read_text())["generation_differs"] is None
