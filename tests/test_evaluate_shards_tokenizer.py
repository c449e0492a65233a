"""`kgpt2 evaluate` given the wrong data: shards of another tokenizer, --shards that is no folder, an align run's
preference files moved or edited.

Before: "run `kgpt2 prepare` with the model's preset" for shards of another tokenizer, whatever the run's model
was, where `kgpt2 train` names the command (kgpt2.model.models.prepare_hint), and evaluate takes new shards with
--shards, not data.shards; "... is not a prepared shard set (no manifest.json)" for a --shards that does not exist
or is a file; an align run's held-out pairs edited (the same count) scored against the old pairs' reference
log-probs without a word; --split ignored on an align run without a word.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_neutral  # a refusal before any scoring

def _files(folder: Path) -> dict:
    return {p.relative_to(folder): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_shards_of_another_tokenizer_name_the_prepare_for_the_run(unevaluated_run, char_shards, kgpt2_cli):
    from kgpt2.run import Run

    before = _files(unevaluated_run)
    preset = Run(unevaluated_run).config().model.preset  # the run's own copy of its preset
    assert Path(preset) == unevaluated_run / "preset"
    r = kgpt2_cli("evaluate", "--run", unevaluated_run, "--shards", char_shards, "--compare", "base")
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.strip().splitlines() == [
        f"kgpt2: error: shard set '{char_shards}' was tokenised with another tokenizer than the model's; make shards "
        f"with the model's: kgpt2 prepare --preset {shlex.quote(preset)} --source SOURCE --out NEW_SHARDS (then "
        f"kgpt2 evaluate --run {shlex.quote(str(unevaluated_run))} --shards NEW_SHARDS)"]
    assert _files(unevaluated_run) == before  # nothing written to the run


def test_a_split_of_no_articles_is_named_after_the_tokenizer(unevaluated_run, tmp_path, char_shards, kgpt2_cli):
    """Shards of another tokenizer whose split is empty: the tokenizer is what to fix first (else the user is sent to
    --split validation, only to be refused again there)."""
    import shutil

    from kgpt2.data.shards import prepare
    from kgpt2.model.char_tokenizer import CharTokenizer

    corpus = tmp_path / "corpus"
    shutil.copytree(char_shards.parent / "corpus", corpus)
    tokenizer = CharTokenizer.train([p.read_text(encoding="utf-8") for p in sorted(corpus.iterdir())])
    prepare(str(corpus), tmp_path / "shards", tokenizer, fractions=(0.8, 0.2, 0.0), progress=False)
    r = kgpt2_cli("evaluate", "--run", unevaluated_run, "--shards", tmp_path / "shards")
    assert r.returncode == 2 and "was tokenised with another tokenizer" in r.stderr, r.stderr


def test_shards_that_are_no_folder_are_named_as_the_option(tiny_run, tmp_path, kgpt2_cli):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The with statement.\n", encoding="utf-8")
    for given, why in ((tmp_path / "nope", "does not exist; it takes the folder `kgpt2 prepare --out` wrote"),
                       (corpus, "is a file; it takes the folder `kgpt2 prepare --out` wrote (to score a file's text, "
                                "prepare it first with the run's tokenizer)")):
        r = kgpt2_cli("evaluate", "--run", tiny_run, "--shards", given)
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"kgpt2: error: --shards '{given}' {why}"]


def _prefs(path: Path, n: int = 16, answer: str = "") -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Say {i} \n", "chosen": f" {answer}{i} is a number.",
                                        "rejected": f" the with {i}"}) + "\n" for i in range(n)), encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=["dpo", "kto"])
def align_run(request, tmp_path_factory, tiny_preset) -> Path:
    """A 2-step align run of the tiny preset on 16 short pairs (KTO: their answers, unpaired)."""
    from kgpt2.align import align
    from kgpt2.config import load_config

    top = tmp_path_factory.mktemp("aligned")
    prefs = _prefs(top / "prefs.jsonl")
    align(load_config(None, [f"model.preset={tiny_preset}", f"checkpoints_root={top}", "run=aligned",
                             f'align.data=["{prefs}"]', "align.steps=2", "align.heldout_fraction=0.25",
                             f"align.loss={request.param}", "data.sequence_length=32", "train.batch_size=4",
                             "train.precision=float32", "train.device=cpu", "lora.enabled=false"]), verbose=0)
    return top / "aligned"


def test_an_align_runs_preference_files_moved_or_edited_are_refused(align_run, kgpt2_cli):
    prefs = align_run.parent / "prefs.jsonl"
    r = kgpt2_cli("evaluate", "--run", align_run, "--split", "validation", "--json")
    assert r.returncode == 0, r.stderr  # the pairs it was aligned on: scored
    assert r.stderr.strip().splitlines() == [
        "kgpt2: an align run is scored on all its held-out preference pairs: --split applies to next-token "
        "evaluation on shards (--shards DIR)"]
    saved = prefs.read_bytes()
    try:
        _prefs(prefs, answer="Well, ")  # as many pairs, other answers
        r = kgpt2_cli("evaluate", "--run", align_run, "--json")
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [
            f"kgpt2: error: the preference files of '{align_run}' changed since it was aligned ({prefs}): its "
            "held-out pairs are not those its reference log-probs were computed on"], r.stderr
        prefs.unlink()
        r = kgpt2_cli("evaluate", "--run", align_run, "--json")
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [
            f"kgpt2: error: align run '{align_run}' is scored on the held-out pairs of its preference files, and "
            f"'{prefs}' is not there any more (moved or deleted): put it back, or score next-token metrics on shards "
            "instead with --shards DIR"], r.stderr
    finally:
        prefs.write_bytes(saved)
