"""Instruction tuning: the Alpaca template, the response-only loss mask, padded example windows."""

import json

import numpy as np
import pytest

pytestmark = pytest.mark.backend_neutral  # instruction data preparation and its prompt format


@pytest.fixture(scope="module")
def alpaca_records(shared_data):
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())
    with_input = [r for r in records if r["input"].strip()][:6]
    without = [r for r in records if not r["input"].strip()][:6]
    return with_input + without


@pytest.fixture(scope="module")
def alpaca_file(tmp_path_factory, alpaca_records):
    path = tmp_path_factory.mktemp("alpaca") / "alpaca_12.json"
    path.write_text(json.dumps(alpaca_records))
    return path


def test_prompt_is_a_prefix_of_the_training_text(alpaca_records, gpt2_tokenizer):
    from kgpt2.data.examples import encode_example
    from kgpt2.generate import render_prompt
    from kgpt2.generation.templates import format_prompt

    for r in alpaca_records:
        prompt = format_prompt(r["instruction"], r["input"])
        assert ("### Input:\n" in prompt) == bool(r["input"].strip())
        # What generation feeds the model is token for token what training saw.
        if not r["input"].strip():
            assert render_prompt(r["instruction"], "instruction") == prompt
        ids, mask = encode_example(gpt2_tokenizer, prompt, r["output"])
        prompt_ids = gpt2_tokenizer.encode(prompt)
        assert list(ids[:len(prompt_ids)]) == prompt_ids
        assert gpt2_tokenizer.decode(ids) == prompt + r["output"].strip()


def test_prepare_masks_exactly_the_response_tokens(alpaca_file, alpaca_records, gpt2_tokenizer, tmp_path):
    from kgpt2.data.batches import WindowBatches, split_options
    from kgpt2.data.shards import ShardSet, prepare
    from kgpt2.generation.templates import format_prompt

    manifest = prepare(str(alpaca_file), tmp_path / "shards", gpt2_tokenizer, splits="train", progress=False)
    info = manifest["splits"]["train"]
    assert info["mask"] == "train.mask.bin" and info["num_articles"] == len(alpaca_records)
    split = ShardSet(tmp_path / "shards").split("train")
    eos = gpt2_tokenizer.eos_id
    for i, r in enumerate(alpaca_records):
        tokens, mask = split.article_tokens(i), split.mask[split.offsets[i]:split.offsets[i + 1]]
        expected_prompt = gpt2_tokenizer.encode(format_prompt(r["instruction"], r["input"]))
        expected_response = gpt2_tokenizer.encode(r["output"].strip()) + [eos]
        assert list(tokens[mask == 0]) == expected_prompt
        assert list(tokens[mask == 1]) == expected_response
        assert list(mask) == [0] * len(expected_prompt) + [1] * len(expected_response)
    assert info["target_tokens"] == int(np.asarray(split.mask).sum())  # counted while writing

    # One example per window: target t (token t+1) weighs 1 iff it is a response token or the EOT.
    T = 512
    batches = WindowBatches(split.tokens, 0, split.num_tokens, sequence_length=T, batch_size=4, seed=0,
                            shuffle=False, **split_options(split, 0, split.num_articles, "response", "example"))
    full = WindowBatches(split.tokens, 0, split.num_tokens, sequence_length=T, batch_size=4, seed=0,
                         shuffle=False, **split_options(split, 0, split.num_articles, "all", "example"))
    assert len(batches) == 3
    real = 0
    for b in range(len(batches)):
        x, y, w = batches[b]
        _, y_all, w_all = full[b]
        for row in range(4):
            i = 4 * b + row
            r = alpaca_records[i]
            n_prompt = len(gpt2_tokenizer.encode(format_prompt(r["instruction"], r["input"])))
            n = int(split.offsets[i + 1] - split.offsets[i])
            assert list(x["token_ids"][row, :n]) == list(split.article_tokens(i))
            want = [1.0 if n_prompt <= t + 1 < n else 0.0 for t in range(T)]
            assert list(w[row]) == want
            assert list(w_all[row]) == [1.0 if t + 1 < n else 0.0 for t in range(T)]
            assert y[row, n - 2] == eos and w[row, n - 2] == 1.0  # the end-of-text is a target
            real += n - 1
    assert batches.padding_fraction() == pytest.approx(1 - real / (3 * 4 * T))
    assert batches.truncated == 0


def test_articles_without_mask_are_unchanged(pydoc_shards):
    from kgpt2.data.batches import WindowBatches, split_options
    from kgpt2.data.shards import ShardSet

    split = ShardSet(pydoc_shards).split("train")
    assert split.mask is None
    opts = split_options(split, 0, split.num_articles, "response", "packed")
    assert opts == {}
    b = WindowBatches(split.tokens, 0, split.num_tokens, sequence_length=32, batch_size=4, seed=0, shuffle=False)
    x, y, w = b[0]
    assert w.min() == 1.0 and list(y[0]) == list(split.tokens[1:33])


def test_bad_options_are_user_errors():
    from kgpt2.config import load_config
    from kgpt2.errors import UserError

    with pytest.raises(UserError, match='data.loss_on must be one of "response", "all"; got "prompt"'):
        load_config(None, ["data.loss_on=prompt"])
    with pytest.raises(UserError, match='data.windows must be one of "auto", "packed", "example", "packed_examples"; got "stacked"'):
        load_config(None, ["data.windows=stacked"])


@pytest.mark.slow
def test_alpaca_finetune_end_to_end(tmp_path, alpaca_file, tiny_preset, pydoc_tokenizer, make_tiny_config, capsys):
    """prepare -> train (response-only loss, padded examples) -> generate with the same template."""
    from dataclasses import replace

    import pandas as pd

    from kgpt2.config import load_config
    from kgpt2.data.shards import prepare
    from kgpt2.generate import Generator, Settings
    from kgpt2.generation.templates import format_prompt
    from kgpt2.run import load_model
    from kgpt2.train import train

    prepare(str(alpaca_file), tmp_path / "shards", pydoc_tokenizer, fractions=(0.75, 0.25, 0.0), progress=False)
    base = load_config("alpaca")
    assert (base.data.loss_on, base.data.windows, base.generate.template) == ("response", "packed_examples", "instruction")
    cfg = make_tiny_config(tmp_path / "runs", tiny_preset, tmp_path / "shards", "run=alpaca", "data.windows=example",
                      "data.sequence_length=64", 'train.stages=["rest"]', "train.batch_size=4", "train.eval_batches=1",
                      "lora.enabled=true", "generate.template=instruction")
    result = train(cfg, verbose=0)
    assert result.global_step > 0
    stages = result.stages
    assert 0 < stages[-1]["padding"] < 1 and stages[-1]["truncated"] >= 0
    assert np.isfinite(stages[-1]["loss"])
    assert "padding" in pd.read_csv(cfg.run_dir / "stages.csv").columns
    model, tok, run_cfg = load_model(cfg.run_dir)
    s = Settings.from_config(run_cfg.generate, sampler="greedy", max_new_tokens=5)
    assert s.template == "instruction"
    gen = Generator(model, tok)
    # The run's template is applied: the same as the rendered prompt given plainly.
    assert gen.generate("Name a colour.", s) == gen.generate(format_prompt("Name a colour."), replace(s, template="plain"))
    # `kgpt2 generate` prints the prompt without the template around it: it says which template it used.
    from kgpt2.cli import main

    argv = ["generate", "--run", str(cfg.run_dir), "--prompt", "Name a colour.", "--sampler", "greedy",
            "--max-new-tokens", "5"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out == "Name a colour." + gen.generate("Name a colour.", s) + "\n"
    assert "the prompt goes in the run's instruction template (generate.template); --template plain gives" in err
    assert main([*argv, "--template", "plain"]) == 0 and "template" not in capsys.readouterr().err
