"""A run exported with `kgpt2 export --to hf` works with transformers' `generate()` as it is loaded.

Found on a student's journey from the built wheel: a tiny model (context 64) trained with the pubmed_lora recipe's
`[generate] max_length = 100` exported generation_config.json with `max_length: 100`, so `model.generate(ids)`
with no arguments ran past position 64 and failed with "IndexError: index out of range in self". The export now
writes the lengths `kgpt2 generate` would use (capped at the context) and says so in one line.
"""

from __future__ import annotations

import logging

import pytest

pytestmark = pytest.mark.backend

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def plain_backbone(tiny_preset):
    from kgpt2.config import ModelConfig
    from kgpt2.model.adapters import merged_backbone
    from kgpt2.model.models import build_backbone

    return merged_backbone(build_backbone(ModelConfig(preset=str(tiny_preset))))


@pytest.mark.parametrize("asked", [{"max_length": 100}, {"max_new_tokens": 200}])
def test_generate_of_the_export_runs_within_the_context(asked, plain_backbone, pydoc_tokenizer, tmp_path, caplog):
    from kgpt2.config_sections import GenerateConfig
    from kgpt2.export import write_hf

    context = plain_backbone.max_sequence_length
    assert context < 100  # the tiny model: what the recipe asks does not fit
    with caplog.at_level(logging.INFO, logger="kgpt2"):
        out = write_hf(plain_backbone, pydoc_tokenizer, tmp_path / "hf", "plain",
                       GenerateConfig(sampler="greedy", **asked))
    (name, value), = asked.items()
    limit = context if name == "max_length" else context - 1
    assert f"generation_config.json: {name} {value} -> {limit}, as the model's context is {context} tokens" \
        in caplog.text
    model = transformers.GPT2LMHeadModel.from_pretrained(out)
    assert getattr(model.generation_config, name) == limit
    prompt = torch.tensor([pydoc_tokenizer.encode("The")])  # one token: the most room to generate
    made = model.generate(prompt, attention_mask=torch.ones_like(prompt), min_new_tokens=limit - 1 if name ==
                          "max_length" else limit)  # never stops early: the whole allowed length is decoded
    assert made.shape[1] == context


def test_a_length_that_fits_is_written_as_asked(plain_backbone, pydoc_tokenizer, tmp_path, caplog):
    import json

    from kgpt2.config_sections import GenerateConfig
    from kgpt2.export import write_hf

    with caplog.at_level(logging.INFO, logger="kgpt2"):
        out = write_hf(plain_backbone, pydoc_tokenizer, tmp_path / "hf", "plain", GenerateConfig(max_length=20))
    assert json.loads((out / "generation_config.json").read_text())["max_length"] == 20
    assert "generation_config.json" not in caplog.text
