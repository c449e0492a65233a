"""The exported generation_config.json carries the run's `[generate]` settings in transformers' names.

It held only the end-of-text ids, so `model.generate()` in transformers decoded greedily, 20 new tokens, whatever
the run's sampler. The oracle is transformers itself: its GenerationConfig as loaded, and `generate()` without
arguments. (The same end to end through `kgpt2 export`: tests/test_export_quantised.py.)
"""

from __future__ import annotations

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
    assert json.loads((out / "generation_config.json").read_text()) == {"bos_token_id": eos, "eos_token_id": eos}
