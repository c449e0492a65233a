"""What the verbs print (kgpt2.reports) agrees with what they wrote."""

from __future__ import annotations

import json
import re

import pytest

from kgpt2 import reports
from kgpt2.cli import main
from kgpt2.model.char_tokenizer import CharTokenizer

pytestmark = pytest.mark.backend_neutral  # run reports from files


def test_prepare_prints_the_manifest_counts(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text(f"document {i} " * 20, encoding="utf-8")
    (corpus / "bad.txt").write_bytes(b"\xff\xfe not utf-8")
    tok_dir = tmp_path / "tok"
    CharTokenizer.train(["document 0123456789 "]).save(tok_dir)
    out = tmp_path / "shards"
    assert main(["-q", "prepare", "--source", str(corpus), "--out", str(out), "--tokenizer", str(tok_dir)]) == 0
    printed = capsys.readouterr().out.splitlines()
    manifest = json.loads((out / "manifest.json").read_text())
    for name, split in manifest["splits"].items():
        line = next(x for x in printed if x.strip().startswith(f"{name}:"))
        for n, noun in ((split["num_articles"], "article"), (split["num_tokens"], "token")):
            assert re.search(rf"\b{n:,} {noun}{'' if n == 1 else 's'}\b", line), line  # "1 article", not "1 articles"
    assert printed[-1] == f"shards in {out} (content hash {manifest['content_hash']})"
    assert any(x.startswith("skipped 1 record:") for x in printed) and any("bad.txt" in x for x in printed)


def test_align_and_tokenizer_reports():
    metrics = {"loss": 0.5, "reward_accuracy": 0.75, "reward_margin": 0.125}
    result = {"pairs": {"read": 10, "ties_skipped": 1, "identical_dropped": 0, "too_long_dropped": 2,
                        "train": 6, "heldout": 1},
              "heldout_before": metrics, "heldout_after": dict(metrics, loss=0.25), "checkpoint": "ckpt-8"}
    text = reports.align_report(result, "runs/dpo").splitlines()
    assert text[0].startswith("pairs: 10 read, 1 tie skipped") and "6 train, 1 held out" in text[0]
    assert text[2] == "held-out  after: loss 0.2500, reward accuracy 0.750, margin 0.1250"
    assert text[-2:] == ["run in runs/dpo (ckpt-8, align.json)", "next: kgpt2 evaluate --run runs/dpo"]
    kto = dict(result, loss="kto")
    assert "6 train, 1 held out example (kto)" in reports.align_report(kto, "runs/kto").splitlines()[0]
    kto["pairs"] = dict(result["pairs"], heldout=2)
    assert "6 train, 2 held out examples (kto)" in reports.align_report(kto, "runs/kto").splitlines()[0]
    tok = CharTokenizer("ab")
    assert reports.tokenizer_report(tok, "t") == "character tokenizer, 3 tokens (end-of-text id 2), saved in t"


def test_counts_of_one_are_singular_in_the_align_report():
    """KTO's report said "1 unpaired examples" (and any align report "1 ties skipped")."""
    metrics = {"loss": 0.5, "reward_accuracy": 0.75, "reward_margin": 0.125}
    pairs = {"read": 3, "ties_skipped": 1, "identical_dropped": 0, "too_long_dropped": 0, "train": 1, "heldout": 1,
             "unpaired": 1}
    result = {"pairs": pairs, "loss": "kto", "heldout_before": metrics, "heldout_after": metrics, "checkpoint": "c"}
    first = reports.align_report(result, "r").splitlines()[0]
    assert "1 tie skipped" in first and ", 1 unpaired example," in first, first
    pairs.update(unpaired=0, unpaired_skipped=1)
    first = reports.align_report(dict(result, loss="dpo"), "r").splitlines()[0]
    assert ", 1 unpaired vote answer skipped," in first, first


def test_train_evaluate_and_align_say_what_to_run_next_with_the_run_quoted(tmp_path):
    """`kgpt2 train`, `evaluate` and `align` ended without the next command (quickstart and recipes give one)."""
    import shlex
    from types import SimpleNamespace

    run = tmp_path / "My Drive" / "run"
    trained = SimpleNamespace(start_step=0, global_step=1, run_dir=run, checkpoint="ckpt-1", stages=[])
    text = reports.train_report(trained).splitlines()
    assert text[0] == f"trained 1 step; run in {run} (latest ckpt-1)"  # not "1 steps"
    assert [shlex.split(line.removeprefix("next:")) for line in text[1:]] == [
        ["kgpt2", "evaluate", "--run", str(run)], ["kgpt2", "demo", "--run", str(run)]]
    assert [shlex.split(line.removeprefix("next:"))[:4] for line in reports.evaluate_next(run).splitlines()] == [
        ["kgpt2", "demo", "--run", str(run)], ["kgpt2", "generate", "--run", str(run)]]
    metrics = {"loss": 0.5, "reward_accuracy": 0.75, "reward_margin": 0.125}
    aligned = {"pairs": {"read": 2, "ties_skipped": 0, "identical_dropped": 0, "too_long_dropped": 0, "train": 1,
                         "heldout": 1}, "heldout_before": metrics, "heldout_after": metrics, "checkpoint": "ckpt-2"}
    last = reports.align_report(aligned, run).splitlines()[-1]
    assert shlex.split(last.removeprefix("next:")) == ["kgpt2", "evaluate", "--run", str(run)]


def test_evaluate_ends_with_the_next_commands(tiny_run, tmp_path, kgpt2_cli):
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run")  # evaluate adds its table to the run
    r = kgpt2_cli("evaluate", "--run", run, "--split", "validation", "--max-batches", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-2:] == [f"next: kgpt2 demo --run {run}",
                                                  f"      kgpt2 generate --run {run} --prompt TEXT"], r.stdout
    r = kgpt2_cli("evaluate", "--run", run, "--split", "validation", "--max-batches", "1", "--json")
    assert "next:" not in r.stdout  # machine-readable output stays JSON


def test_a_bpe_smaller_than_asked_says_why():
    """--vocab-size 100000 on a small corpus gave 12,949 tokens without a word."""
    from kgpt2.model.tokenizer import Tokenizer

    texts = ["the cat sat on the mat", "the cat ate the rat"] * 3
    tok = Tokenizer.train(texts, vocab_size=1000, min_frequency=2)
    assert 258 < tok.vocab_size < 1000
    assert reports.tokenizer_report(tok, "t", 1000, 2).endswith(
        "; fewer than the 1,000 asked: no other pair of tokens appears at least 2 times in the source")
    assert Tokenizer.train(texts, vocab_size=1000, min_frequency=100).vocab_size == 257  # no pair is seen 100 times
    assert "fewer" not in reports.tokenizer_report(tok, "t", tok.vocab_size, 2)


def test_commands_to_copy_quote_a_path_with_spaces(tmp_path):
    """A run on Google Drive ("My Drive/kgpt2 runs"): the commands kgpt2 prints to copy must paste as one path."""
    import shlex

    from kgpt2.data.shard_folder import check_out_folder
    from kgpt2.errors import UserError

    run_dir = tmp_path / "My Drive" / "kgpt2 runs" / "quickstart"
    text = reports.quickstart_report({"run_dir": run_dir, "prompt": "The", "sample": " end"}, "table")
    commands = [line.removeprefix("next:").strip() for line in text.splitlines()[-2:]]
    assert [shlex.split(c)[:4] for c in commands] == [["kgpt2", "demo", "--run", str(run_dir)],
                                                      ["kgpt2", "generate", "--run", str(run_dir)]]
    out = tmp_path / "My Drive"
    out.mkdir()
    (out / "corpus.jsonl").write_text("{}\n")
    with pytest.raises(UserError) as refused:
        check_out_folder(out, out / "corpus.jsonl")
    assert shlex.split(str(refused.value).split("e.g. ")[1]) == ["--out", str(out / "shards")]


def test_a_finished_run_that_trained_nothing_is_told_how_to_train_on():
    """`kgpt2 train --run R train.learning_rate=...` on a finished run said only "trained nothing", as if the new
    rate had nowhere to go."""
    from types import SimpleNamespace

    result = SimpleNamespace(start_step=75, global_step=75, run_dir="runs/q", checkpoint="ckpt-75", stages=[],
                             one_more_pass="as a new stage ('train.stages=[\"rest\"]' train.epochs=1)",
                             max_steps_cut=False)
    assert reports.train_report(result) == (
        "trained nothing: the run is at step 75, the end of its plan; run in runs/q (latest ckpt-75). To train it "
        "further, give it more to do: another pass as a new stage ('train.stages=[\"rest\"]' train.epochs=1), or "
        'new shards (docs/training.md, "Continue a run")')
    # A plan of one stage (a run continued once with that very advice): another pass is another epoch of it; a
    # higher train.max_steps is offered only where it ended the plan early (else it would train nothing either).
    result.one_more_pass, result.max_steps_cut = "(train.epochs=7)", True
    assert "give it more to do: another pass (train.epochs=7), a higher train.max_steps, or new" in (
        reports.train_report(result))
