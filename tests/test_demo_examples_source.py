"""The demo's example prompts say where they came from, and the prompt box's placeholder fits the run's kind.

Before: the examples were labelled "Examples from the run's held-out data" whatever split gave them, shards
prepared with `--splits train` (validation and test listed, empty) gave no examples at all, and the placeholder
was "The assert statement" on every run (a chat run, a PubMed run).
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest

pytestmark = pytest.mark.backend_neutral  # shards and a page description, no model is built

TEXTS = [f"Document {i} tells of the with statement and its context managers." for i in range(16)]


def _run(root, name, make_tiny_config, tiny_preset, **prepare_options):
    """A run folder (config.json only) whose shards were prepared with `prepare_options`."""
    from kgpt2.data.shards import prepare
    from kgpt2.model.models import load_tokenizer
    from kgpt2.run import Run

    corpus = root / f"{name}-corpus"
    corpus.mkdir()
    for i, text in enumerate(TEXTS):
        (corpus / f"d{i:02}.txt").write_text(text, encoding="utf-8")
    cfg = make_tiny_config(root / "runs", tiny_preset, root / f"{name}-shards", f"run={name}")
    prepare(str(corpus), cfg.data.shards, load_tokenizer(cfg.model), progress=False, **prepare_options)
    Run.of(cfg).save_config(cfg)
    return cfg.run_dir


@pytest.mark.parametrize("options, source, label", [
    ({"fractions": (0.5, 0.5, 0.0)}, "validation", "Examples from the run's held-out data (its validation split)"),
    ({"fractions": (0.5, 0.0, 0.5)}, "test", "Examples from the run's held-out data (its test split)"),
    ({"splits": "train"}, "train", "Examples from the run's training data (its shards have no held-out split)"),
], ids=["validation", "test", "train-only"])
def test_the_examples_label_names_the_split_they_came_from(tmp_path, make_tiny_config, tiny_preset, options, source,
                                                             label):
    from kgpt2.data.shards import ShardSet
    from kgpt2.run import load_run_config
    from kgpt2.serving.demo_examples import run_examples

    run = _run(tmp_path, "r", make_tiny_config, tiny_preset, **options)
    examples = run_examples(run)
    assert (examples.source, examples.label) == (source, label)
    split = ShardSet(load_run_config(run).data.shards).split(source)
    firsts = {" ".join(t.split()[:6]) for t in TEXTS}
    assert split.num_articles and examples.texts and set(examples.texts) <= firsts


def test_a_run_without_shards_has_no_examples_and_a_plain_placeholder(tmp_path):
    from kgpt2.serving.demo_examples import placeholder, run_examples

    assert run_examples(tmp_path / "gone").texts == []
    assert placeholder("plain", []) == "The start of a text for the model to continue"


def _page(run_dir, template: str):
    """The request panel of the demo page for a stand-in Demo on `run_dir`, and its components."""
    from kgpt2.generate import Settings
    from kgpt2.serving import demo_layout
    from kgpt2.serving.demo_examples import run_examples  # as kgpt2.demo.Demo.examples gives them

    pool = SimpleNamespace(checkpoints=lambda run: ["base"], runs=lambda: ["r"], run_dir=lambda run: run_dir)
    demo = SimpleNamespace(pool=pool, run="r", latest="base", context=lambda run=None: 64, max_prompt_chars=2000,
                           defaults=Settings(template=template), max_new_tokens=lambda run=None: 32,
                           examples=lambda run=None: run_examples(run_dir))
    with gr.Blocks() as app:
        demo_layout._request_panel(demo, SimpleNamespace())
    return list(app.blocks.values())


@pytest.mark.parametrize("template, kind", [("plain", "The start of a text for the model to continue"),
                                            ("instruction", "An instruction for the model"),
                                            ("chat", "A message to the model (your turn in the chat)")])
def test_the_page_labels_its_examples_and_fits_the_placeholder_to_the_run(tmp_path, make_tiny_config, tiny_preset,
                                                                          template, kind):
    run = _run(tmp_path, "r", make_tiny_config, tiny_preset, splits="train")
    blocks = _page(run, template)
    prompt = next(b for b in blocks if getattr(b, "elem_id", None) == "prompt")
    assert prompt.placeholder.startswith(f"{kind}, e.g. Document ")
    labels = [b.label for b in blocks if isinstance(b, gr.Dataset)]
    assert labels == ["Examples from the run's training data (its shards have no held-out split)"]
