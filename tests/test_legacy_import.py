"""`kgpt2 import`: a KerasNLP GPT-2 saved under TF / Keras 2 gives the same logits in kgpt2.

The fixture in tests/data/legacy_gpt2 was written with the real legacy stack
(KerasNLP 0.6.4 on tf-keras 2.21, Keras 2), by make_fixture.py there: a
`GPT2CausalLM.save_weights("legacy.ckpt")` TF checkpoint, the same model as
`legacy.weights.h5`, and its own logits on a fixed input (the oracle).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from kgpt2.errors import UserError

pytestmark = pytest.mark.backend

FIXTURE = Path(__file__).parent / "data" / "legacy_gpt2"


def imported_logits(preset) -> np.ndarray:
    from kgpt2.config import load_config
    from kgpt2.model.models import build_causal_lm

    data = np.load(FIXTURE / "logits.npz")
    model = build_causal_lm(load_config(None, [f"model.preset={preset}", "lora.enabled=false",
                                               "model.pad_vocabulary_to=0"]))
    ids = data["token_ids"]
    return np.asarray(model({"token_ids": ids, "padding_mask": np.ones_like(ids, bool)})), data["logits"]


@pytest.mark.parametrize("name", ["legacy.ckpt", "legacy.weights.h5"])
def test_import_gives_the_legacy_models_logits(name, tmp_path, tiny_preset):
    from kgpt2.legacy_import import import_legacy

    # A copy elsewhere, as a user would bring it: the checkpoint is its .index + .data-* files.
    for f in FIXTURE.glob(name + "*"):
        shutil.copy(f, tmp_path / f.name)
    out = import_legacy(tmp_path / name, tmp_path / "preset", str(tiny_preset))
    ours, theirs = imported_logits(out)
    assert np.abs(theirs).max() > 0.5
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_import_cli_and_its_refusals(tmp_path, tiny_preset, kgpt2_cli):
    def cli(*args):
        return kgpt2_cli("import", *args, cwd=tmp_path)

    done = cli(FIXTURE / "legacy.ckpt", "p", "--tokenizer", tiny_preset)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "p" / "config.json").is_file()
    again = cli(FIXTURE / "legacy.ckpt", "p", "--tokenizer", tiny_preset)  # never over a user's folder
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    (tmp_path / "notes.txt").write_text("hello")
    wrong = cli(tmp_path / "notes.txt", "q", "--tokenizer", tiny_preset)
    assert wrong.returncode == 2 and "is not a TensorFlow checkpoint" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1 and not (tmp_path / "q").exists()
    for model in (tiny_preset, tiny_preset / "model.weights.h5"):  # a model kgpt2 loads as it is
        loaded = cli(model, "q", "--tokenizer", tiny_preset)
        assert loaded.returncode == 2 and f"use model.preset={tiny_preset} " in loaded.stderr, loaded.stderr


def test_a_kgpt2_runs_own_files_are_sent_to_the_run(tmp_path, tiny_run, tiny_preset, kgpt2_cli):
    """A run's stage export or checkpoint given to `import` said "a Hugging Face or KerasHub model directory ...
    use model.preset=<the run>", which is no preset."""
    first = sorted((c for c in tiny_run.glob("ckpt-*")), key=lambda c: int(c.name.split("-")[1]))[0]
    cases = {tiny_run / "stage-1.weights.h5": (f"is part of the kgpt2 run '{tiny_run}'", " --checkpoint stage-1, ",
                                                f"init_from={tiny_run}:stage-1 "),
             first: (f"is part of the kgpt2 run '{tiny_run}'", f" --checkpoint {first.name}, ", f":{first.name} "),
             first / "weights.npz": ("is part of the kgpt2 run", f" --checkpoint {first.name}, ", ""),
             tiny_run: (f"'{tiny_run}' is the kgpt2 run", f"use --run {tiny_run}, or train.init_from={tiny_run} ", "")}
    for given, parts in cases.items():
        done = kgpt2_cli("import", given, "out", "--tokenizer", tiny_preset, cwd=tmp_path)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert all(p in done.stderr for p in parts) and "needs no import" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_any_file_of_a_checkpoint_names_it():
    """A user may pick NAME.ckpt, its .index or its .data-* file: all three read the same checkpoint."""
    from kgpt2.legacy_import import read_legacy_weights

    want = read_legacy_weights(FIXTURE / "legacy.ckpt")
    for name in ("legacy.ckpt.index", "legacy.ckpt.data-00000-of-00001"):
        got = read_legacy_weights(FIXTURE / name)
        assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)


def test_other_files_are_refused_in_one_sentence(tmp_path, tiny_preset):
    import h5py

    from kgpt2.legacy_import import import_legacy
    from kgpt2.model.tokenizer import Tokenizer

    with h5py.File(tmp_path / "keras2.h5", "w") as f:  # Keras 2's layer-name format
        f.attrs["layer_names"] = [b"dense"]
    with pytest.raises(UserError, match="Keras 2 .h5 weights file"):
        import_legacy(tmp_path / "keras2.h5", tmp_path / "a", str(tiny_preset))
    with pytest.raises(UserError, match=r"'.*missing.ckpt' does not exist \(a TF checkpoint"):
        import_legacy(tmp_path / "missing.ckpt", tmp_path / "b", str(tiny_preset))
    shutil.copy(FIXTURE / "legacy.ckpt.index", tmp_path / "broken.ckpt.index")  # no .data-* beside it
    with pytest.raises(UserError, match="could not read the TF checkpoint"):
        import_legacy(tmp_path / "broken.ckpt", tmp_path / "c", str(tiny_preset))
    tok = Tokenizer.train(["a small text to train a tiny tokenizer on"] * 20, vocab_size=300)
    tok.save(tmp_path / "tok")
    with pytest.raises(UserError, match=r"has \d+ tokens but the model 512"):
        import_legacy(FIXTURE / "legacy.ckpt", tmp_path / "d", str(tmp_path / "tok"))
    assert not any((tmp_path / n).exists() for n in "abcd")


@pytest.mark.parametrize("given", ["pic.png", "toks/missing", "empty"])
def test_a_wrong_tokenizer_path_gets_prepares_sentence(given, tmp_path, kgpt2_cli):
    """`--tokenizer pic.png` said "model preset directory 'pic.png' is a file, not a folder; ... model.preset =
    "scratch"": the user named no preset, and import has no model.preset. Now `kgpt2 prepare`'s own sentence for
    the same --tokenizer (one code path), and nothing is written."""
    (tmp_path / "pic.png").write_bytes(b"\x89PNG\r\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "corpus.txt").write_text("A few words to tokenise.\n")
    imported = kgpt2_cli("import", FIXTURE / "legacy.ckpt", "out", "--tokenizer", given, cwd=tmp_path)
    prepared = kgpt2_cli("prepare", "--source", "corpus.txt", "--out", "shards", "--tokenizer", given, cwd=tmp_path)
    assert imported.returncode == prepared.returncode == 2, imported.stderr
    assert imported.stderr == prepared.stderr and len(imported.stderr.strip().splitlines()) == 1, imported.stderr
    assert "preset" not in imported.stderr and given in imported.stderr
    assert not (tmp_path / "out").exists()


def test_an_unknown_preset_name_is_told_what_import_takes(tmp_path, kgpt2_cli):
    """A mistyped preset name ended in "or model.preset = \\"scratch\\"", which `kgpt2 import` has no use for."""
    done = kgpt2_cli("import", FIXTURE / "legacy.ckpt", "out", "--tokenizer", "gpt2_bse_en", cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("kgpt2: error: unknown GPT-2 preset 'gpt2_bse_en' (known: gpt2_base_en, ")
    assert "pass --tokenizer DIR" in done.stderr and "model.preset" not in done.stderr
