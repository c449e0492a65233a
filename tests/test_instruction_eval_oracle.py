"""`kgpt2 evaluate` on instruction data, checked against transformers on the exported model.

The alpaca recipe trains and evaluates several examples per window (packed, each attending only to itself, its
positions restarting) with the loss on the response tokens only. The oracle knows none of that: it reads the
shard files with numpy, runs each held-out example alone through transformers' GPT2LMHeadModel (the `kgpt2
export --to hf` of the same checkpoint), cut to the window length as kgpt2 cuts it, and scores the tokens the
mask marks.
"""

import json

import numpy as np
import pytest

pytestmark = pytest.mark.backend  # packed-window attention and positions, on each backend

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SEQUENCE_LENGTH = 63  # the tiny preset's 64 positions: some examples are cut, most responses start inside


def _oracle(shards, split, hf_dir, sequence_length):
    """Token-weighted loss and accuracy over the masked targets of each example, scored alone."""
    tokens = np.fromfile(shards / f"{split}.bin", np.uint16).astype(np.int64)
    mask = np.fromfile(shards / f"{split}.mask.bin", np.uint8).astype(bool)
    offsets = np.load(shards / f"{split}.offsets.npy")
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    nll, correct, count, cut = 0.0, 0, 0, 0
    with torch.no_grad():
        for a, b in zip(offsets[:-1], offsets[1:]):
            ids, scored = tokens[a:b][: sequence_length + 1], mask[a:b][1: sequence_length + 1]
            cut += b - a > sequence_length + 1
            logits = model(torch.tensor(ids[None, :-1])).logits[0].double()
            target = torch.tensor(ids[1:])
            logp = torch.log_softmax(logits, -1)[torch.arange(len(target)), target]
            nll -= float(logp[scored].sum())
            correct += int((logits.argmax(-1) == target)[scored].sum())
            count += int(scored.sum())
    return nll / count, correct / count, count, cut


@pytest.mark.parametrize("windows", ["packed_examples", "example"])
def test_evaluate_on_response_tokens_matches_transformers(tmp_path, shared_data, tiny_preset, pydoc_tokenizer,
                                                          make_tiny_config, windows):
    from kgpt2.data.shards import prepare
    from kgpt2.evaluate import evaluate_run
    from kgpt2.export import export_run
    from kgpt2.train import train

    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:80]
    (tmp_path / "alpaca.json").write_text(json.dumps(records))
    shards = tmp_path / "shards"
    prepare(str(tmp_path / "alpaca.json"), shards, pydoc_tokenizer, fractions=(0.7, 0.3, 0.0), progress=False)
    cfg = make_tiny_config(tmp_path / "runs", tiny_preset, shards, "run=alpaca", f"data.windows={windows}",
                           "data.loss_on=response", f"data.sequence_length={SEQUENCE_LENGTH}", 'train.stages=["rest"]')
    train(cfg, verbose=0)
    [row] = evaluate_run(cfg.run_dir, split="validation", save=False)
    export_run(cfg.run_dir, "hf", tmp_path / "hf")
    loss, accuracy, tokens, cut = _oracle(shards, "validation", tmp_path / "hf", SEQUENCE_LENGTH)
    assert cut > 0  # the window length cut some examples, so the oracle checks the cut too
    assert row["tokens"] == tokens > 50
    assert row["loss"] == pytest.approx(loss, rel=1e-5) and row["accuracy"] == pytest.approx(accuracy, abs=1e-6)
