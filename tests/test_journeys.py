"""A user's whole path with a run: train it, move it, open it from elsewhere, keep training it.

Each step goes through the `kgpt2` command line (`kgpt2.cli.main`, or the
console script of a wheel installed into a fresh venv) from a folder outside
the checkout, and is checked on what it wrote or printed. The 300-article
corpus with the default plan (`--dry-run`, then training) is walked in
tests/test_stage_plan.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.backend_neutral  # the CLI's journeys and refusals over train/generate, tested on both backends elsewhere

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The assert statement"


def kgpt2(capsys, *argv) -> tuple[int, str, str]:
    """`kgpt2 ARGV` in this process: (exit status, stdout, stderr)."""
    from kgpt2.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def journey(tmp_path_factory, tiny_preset, pydoc_tokenizer_dir, pydoc_shards, tiny_overrides):
    """A LoRA run trained from folder `work/` on a preset and tokenizer that are then deleted, the run moved away."""
    from kgpt2.config import load_config
    from kgpt2.generate import generate_from_run
    from kgpt2.train import train

    top = tmp_path_factory.mktemp("journey")
    preset, tokenizer = top / "mine" / "preset", top / "mine" / "tokenizer"
    shutil.copytree(tiny_preset, preset)
    shutil.copytree(pydoc_tokenizer_dir, tokenizer)
    (top / "work").mkdir()
    old_cwd = Path.cwd()
    os.chdir(top / "work")
    try:  # relative paths, as a user types them
        cfg = load_config(None, tiny_overrides + ["run=trip", "model.preset=../mine/preset", "model.tokenizer=../mine/tokenizer",
                                                  f"data.shards={pydoc_shards}", "train.stages=[5]", "lora.enabled=true"])
        train(cfg, verbose=0)
        greedy = generate_from_run(Path("checkpoints/trip"), PROMPT, sampler="greedy", max_new_tokens=8)
    finally:
        os.chdir(old_cwd)
    shutil.rmtree(top / "mine")  # the base the run was made from is gone
    moved = shutil.move(str(top / "work" / "checkpoints" / "trip"), str(top / "drive" / "trip"))
    (top / "elsewhere").mkdir()
    return {"top": top, "run": Path(moved), "greedy": greedy}


def test_config_json_names_paths_relative_to_the_run(journey):
    run = journey["run"]
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["preset"] == "preset" and saved["model"]["tokenizer"] == "tokenizer"
    assert (run / "preset" / "config.json").is_file() and (run / "tokenizer" / "vocabulary.json").is_file()
    assert not Path(saved["data"]["shards"]).is_absolute()  # shards stay outside, named relative (and absolute beside)
    from kgpt2.run import Run

    cfg = Run(run).config()
    assert Path(cfg.model.preset) == run / "preset" and cfg.run_dir == run


def test_moved_run_generates_evaluates_and_exports_from_another_folder(journey, capsys, monkeypatch):
    run = journey["run"]
    monkeypatch.chdir(journey["top"] / "elsewhere")
    code, out, err = kgpt2(capsys, "generate", "--run", run, "--prompt", PROMPT, "--sampler", "greedy", "--max-new-tokens", 8)
    assert code == 0, err
    assert out.strip() == (PROMPT + journey["greedy"]).strip()  # the same model as before the move

    code, out, err = kgpt2(capsys, "evaluate", "--run", run, "--checkpoint", "latest", "--compare", "base", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["model"] for r in rows][0] == "base" and rows[1]["loss"] < rows[0]["loss"]

    code, out, err = kgpt2(capsys, "export", "--run", run, "--to", "hf", "hf-out")
    assert code == 0, err
    from transformers import GPT2LMHeadModel  # an independent reader of the export

    hf = GPT2LMHeadModel.from_pretrained(Path("hf-out"))
    assert hf.config.n_layer == 2 and hf.config.n_embd == 32


def test_generate_takes_every_template_the_run_can_have(journey, capsys):
    from kgpt2.generate import Generator, Settings, load_for_generation
    from kgpt2.generation.templates import TEMPLATES

    model, tokenizer, cfg = load_for_generation(journey["run"], "latest")
    for template in TEMPLATES:  # `chat` was refused by the CLI, though chat runs save it as their default
        code, out, err = kgpt2(capsys, "generate", "--run", journey["run"], "--prompt", PROMPT, "--sampler", "greedy",
                               "--max-new-tokens", 6, "--template", template)
        assert code == 0, err
        s = Settings.from_config(cfg.generate, sampler="greedy", max_new_tokens=6, template=template)
        assert out.strip() == (PROMPT + Generator(model, tokenizer).generate(PROMPT, s)).strip(), template


def test_moved_run_without_its_shards_asks_for_them(journey, capsys, monkeypatch, pydoc_shards):
    moved_shards = journey["top"] / "shards-moved"
    shutil.copytree(pydoc_shards, moved_shards)
    run = journey["top"] / "drive" / "no-shards"
    shutil.copytree(journey["run"], run)
    saved = json.loads((run / "config.json").read_text())  # as if the shards had moved with the user
    saved["data"]["shards"], saved["absolute_paths"]["data.shards"] = "../gone", str(journey["top"] / "gone")
    (run / "config.json").write_text(json.dumps(saved))
    monkeypatch.chdir(journey["top"] / "elsewhere")
    code, out, err = kgpt2(capsys, "evaluate", "--run", run, "--max-batches", 1)
    (error,) = [line for line in err.splitlines() if line.startswith("kgpt2: error:")]
    assert code == 2 and "--shards" in error and "Traceback" not in err
    code, out, err = kgpt2(capsys, "evaluate", "--run", run, "--max-batches", 1, "--shards", moved_shards, "--json")
    assert code == 0, err
    assert json.loads(out)[0]["tokens"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_moved_run_answers_in_the_demo(journey):
    from gradio_client import Client

    from kgpt2.demo import Demo, serve

    demo = Demo(journey["run"].parent, journey["run"].name)
    app = serve(demo, port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(app.local_url, verbose=False, download_files=False)
        name = journey["run"].name
        left, right, status, *_ = client.predict(
            run_a=name, ckpt_a="base", run_b=name, ckpt_b=demo.latest, arena=False, prompt=PROMPT, input_text="",
            template="plain", sampler="greedy", temperature=0.8, top_k=50, top_p=0.95, num_beams=2,
            max_new_tokens=8, seed=0, api_name="/compare")
        client.close()
    finally:
        app.close()
    assert status.startswith("Done") and left and right
    assert right.strip() in (PROMPT + journey["greedy"]).strip()  # the trained side is the run's latest checkpoint


# -- keep training a run later: a new stage on new shards ------------------------------------------


def _steps(run: Path) -> list[dict]:
    import pandas as pd

    return pd.read_csv(run / "logs" / "steps.csv").sort_values("step").to_dict("records")


def test_continue_with_a_new_stage_on_new_shards(tmp_path, capsys, monkeypatch, tiny_preset, pydoc_shards,
                                                 pydoc_tokenizer, tiny_overrides, shared_data):
    from kgpt2.data.shards import prepare
    from kgpt2.training.checkpoints import CheckpointManager

    monkeypatch.chdir(tmp_path)
    code, out, err = kgpt2(capsys, "train", *tiny_overrides, "run=long", f"model.preset={tiny_preset}",
                           f"data.shards={pydoc_shards}", "train.stages=[5]")
    assert code == 0, err
    run = tmp_path / "checkpoints" / "long"
    first = CheckpointManager(run).latest()
    boundary = first.step
    # "the rest, later": new articles, prepared with the same tokenizer
    new = prepare("pydoc", tmp_path / "more-shards", pydoc_tokenizer, fractions=(0.8, 0.1, 0.1), seed=7, progress=False)
    assert new["content_hash"] != json.loads((pydoc_shards / "manifest.json").read_text())["content_hash"]

    code, out, err = kgpt2(capsys, "train", "--run", run, f"data.shards={tmp_path / 'more-shards'}", 'train.stages=[5,10]')
    assert code == 0, err
    ckpts = CheckpointManager(run).list()
    last = ckpts[-1]
    assert [c.state["stage"] for c in ckpts if c.state.get("stage_end")] == [1, 2, 3]  # stages 2 and 3 after stage 1
    assert (run / "stage-3.weights.h5").is_file() and (run / "stage-1.weights.h5").is_file()
    rows = _steps(run)
    assert [r["step"] for r in rows] == list(range(1, last.step + 1)) and last.step > boundary
    with np.load(last.path / "optimizer.npz") as opt:  # Keras' optimizer.iterations: not reset to 0
        assert int(opt["iteration"]) == last.step
    # The learning rate follows warmup + cosine over the new total: no second warmup at the boundary,
    # the rows before it kept as they were logged (the first plan's curve, down to 0 at its end).
    peak, warmup, total = 0.003, 2, last.state["total_steps"]
    after = [r for r in rows if r["step"] > boundary]
    expected = [peak * 0.5 * (1 + math.cos(math.pi * (r["step"] - 1 - warmup) / (total - warmup))) for r in after]
    np.testing.assert_allclose([r["learning_rate"] for r in after], expected, rtol=2e-3)
    assert after[0]["learning_rate"] > 0.5 * peak and rows[boundary - 1]["learning_rate"] < 0.01 * peak
    # The change is recorded in the run.
    (record,) = json.loads((run / "config.json").read_text())["continuations"]
    assert record["step"] == boundary and set(record["changed"]) == {"data.shards", "train.stages"}

    # resuming it again, unchanged, trains nothing more and records nothing
    code, out, err = kgpt2(capsys, "train", "--run", run)
    assert code == 0, err
    assert CheckpointManager(run).latest().step == last.step
    assert len(json.loads((run / "config.json").read_text())["continuations"]) == 1

    # what the checkpoints depend on is refused, naming the field
    for change, named in [("lora.enabled=true", "lora"), (f"model.tokenizer={shared_data / 'gpt2-tokenizer'}", "tokenizer"),
                          ("train.batch_size=3", "batch_size")]:
        code, out, err = kgpt2(capsys, "train", "--run", run, change, "train.stages=[5,10,10]")
        (error,) = [line for line in err.splitlines() if line.startswith("kgpt2: error:")]
        assert code == 2 and named in error and "Traceback" not in err, (change, err)


def test_more_epochs_on_a_finished_run_train_them(tmp_path, capsys, monkeypatch, tiny_preset, pydoc_shards,
                                                 tiny_overrides, tiny_run):
    """`kgpt2 train --run RUN train.epochs=3` after a 1-epoch run trains its stage's epochs 2 and 3; on a run
    of several finished stages, whose earlier stages could not get them, it is refused."""
    from kgpt2.training.checkpoints import CheckpointManager

    monkeypatch.chdir(tmp_path)
    code, out, err = kgpt2(capsys, "train", *tiny_overrides, "run=short", f"model.preset={tiny_preset}",
                           f"data.shards={pydoc_shards}", "train.stages=[5]")
    assert code == 0, err
    run = tmp_path / "checkpoints" / "short"
    one = CheckpointManager(run).latest().step
    code, out, err = kgpt2(capsys, "train", "--run", run, "train.epochs=3")
    assert code == 0, err
    last = CheckpointManager(run).latest()
    assert last.step == 3 * one and last.state["stage_end"] and last.state["stage"] == 1
    assert [r["step"] for r in _steps(run)] == list(range(1, 3 * one + 1))
    assert [r["stage"] for r in last.state["stage_metrics"]] == [1]  # the stage's row, at its new end
    assert "epochs 1 -> 3" in err or "train.epochs 1 -> 3" in err
    assert f"trained {2 * one} steps (step {one} -> {3 * one})" in out, out  # this call's steps, not the run's
    code, out, err = kgpt2(capsys, "train", "--run", run)  # unchanged: nothing more, and it says so
    assert code == 0 and CheckpointManager(run).latest().step == 3 * one
    # a train.max_steps past the plan trains nothing either, and is not kept: recorded, it cut a later stage short
    saved = (run / "config.json").read_bytes()
    code, out2, err2 = kgpt2(capsys, "train", "--run", run, f"train.max_steps={5 * one}")
    assert code == 0 and "trained nothing" in out2 and (run / "config.json").read_bytes() == saved, err2
    assert "not recorded: train.max_steps 0 -> " in err2, err2
    assert "nothing more to train" in err
    # ... and only that: no model built, no "resuming from" a stage past the plan, no steps claimed
    assert "resuming from" not in err and "model:" not in err, err
    assert f"trained nothing: the run is at step {3 * one}" in out, out
    # the advice for a plan of one stage is one more epoch ('train.stages=["rest"]' is the plan it has), and it trains
    assert "give it more to do: another pass (train.epochs=4)," in out, out
    code, out, err = kgpt2(capsys, "train", "--run", run, "train.epochs=4")
    assert code == 0 and CheckpointManager(run).latest().step == 4 * one, err

    two_stages = tmp_path / "two-stages"
    shutil.copytree(tiny_run, two_stages)
    code, out, err = kgpt2(capsys, "train", "--run", two_stages, "train.epochs=2", "train.learning_rate=0.0005")
    (error,) = [line for line in err.splitlines() if line.startswith("kgpt2: error:")]
    assert code == 2 and "finished its 2 stages" in error and "Traceback" not in err, err
    assert CheckpointManager(two_stages).latest().step == CheckpointManager(tiny_run).latest().step
    # ... in one sentence with two commands, each doing what it says: one more pass as a new stage of one epoch
    # (it said "to train it for 2 more" of a total asked for; a new stage took the run's epochs, not one pass) ...
    one_pass = error.split("give it a new stage: ")[1].split("; or train every stage")[0]
    code, out, err = kgpt2(capsys, *shlex.split(one_pass)[1:])
    passed = CheckpointManager(two_stages).latest().state
    assert code == 0 and passed["stage"] == 3 and passed["stage_end"] and passed["epochs"] == 1, err
    shutil.rmtree(two_stages)
    shutil.copytree(tiny_run, two_stages)
    # ... or every stage for the epochs asked, in a new run from its weights
    command = error.split("in a new run from its weights: ")[1]
    assert command.startswith("kgpt2 train --config "), error
    assert command.endswith(" train.epochs=2 train.learning_rate=0.0005"), command  # the user's other overrides too
    code, out, err = kgpt2(capsys, *shlex.split(command)[1:])
    assert code == 0, err
    more = CheckpointManager(tmp_path / "two-stages-more").latest()
    assert more.step == 2 * CheckpointManager(tiny_run).latest().step and "starting from ckpt-" in err
    assert json.loads((tmp_path / "two-stages-more" / "config.json").read_text())["train"]["learning_rate"] == 0.0005


def test_config_accepts_a_runs_config_json(tmp_path, capsys, monkeypatch, tiny_run):
    run = tmp_path / "copied"
    shutil.copytree(tiny_run, run)
    monkeypatch.chdir(tmp_path)
    code, out, err = kgpt2(capsys, "train", "--dry-run", "--config", run / "config.json")
    assert code == 0, err
    assert out.splitlines()[0] == "stage plan [5, 10]"
    code, out, err = kgpt2(capsys, "train", "--run", tmp_path / "nothing-here")
    assert code == 2 and "not a kgpt2 run directory" in err


def test_a_model_folder_given_as_run_says_so(tmp_path, capsys, monkeypatch, tiny_preset, tiny_run):
    """--run on a KerasHub preset or a Hugging Face model folder (config.json, but a model's): one sentence that
    says what it is and how to train on it, from every verb that opens a run (it was "unknown config key
    'module'; did you mean 'model'?"); a root listing runs leaves such folders out."""
    from kgpt2.run import list_runs

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_preset, "preset")
    Path("hf").mkdir()
    Path("hf/config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    shutil.copytree(tiny_run, "run")
    for folder, kind in (("preset", "a KerasHub preset"), ("hf", "a Hugging Face model")):
        for verb in (["evaluate"], ["generate", "--prompt", "x"], ["serve"], ["export", "--to", "hf", "out"],
                     ["train"], ["demo"]):
            code, out, err = kgpt2(capsys, verb[0], "--run", folder, *verb[1:])
            assert (code, err) == (2, f"kgpt2: error: '{folder}' holds {kind}, not a kgpt2 run; --run takes a "
                                      f"run's folder (train one on this model with model.preset = \"{folder}\")\n")
    assert list_runs(".") == ["run"]


def test_init_from_starts_a_new_run_from_another_runs_weights(tmp_path, tiny_run, make_tiny_config, tiny_preset,
                                                              pydoc_shards):
    from kgpt2.train import Trainer, train
    from kgpt2.training.checkpoints import CheckpointManager, array_names, checkpoint_variables

    source = CheckpointManager(tiny_run).list()[0]  # not the newest: the one named
    cfg = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=second", "train.stages=[5]",
                           f"train.init_from={tiny_run}:{source.id}")
    trainer = Trainer(cfg, verbose=0)
    trainer.setup()
    with trainer.scope():
        trainer.build()
        cursor = trainer.resume()
        variables = checkpoint_variables(trainer.model)
        weights = dict(zip(array_names(variables), (np.array(v) for v in variables)))
    assert cursor.step == 0 and int(trainer.optimizer.iterations) == 0  # a fresh optimizer
    trainer.lock.release()  # train() below takes the run's lock itself
    with np.load(source.path / "weights.npz") as saved:
        assert sorted(saved.files) == sorted(weights)  # stored by variable path (kgpt2.training.checkpoints)
        for key, value in weights.items():
            np.testing.assert_array_equal(saved[key], value)
    result = train(cfg, verbose=0)
    assert result.global_step == CheckpointManager(cfg.run_dir).latest().step > 0
    bad = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=third", f"train.init_from={tiny_run}",
                           "lora.enabled=true")
    from kgpt2.errors import UserError

    with pytest.raises(UserError, match="train.init_from.*lora"):
        Trainer(bad, verbose=0).setup()


def test_init_from_checks_every_signature_field_the_weights_depend_on(tmp_path, tiny_run, make_tiny_config,
                                                                       tiny_preset, pydoc_shards):
    """train.init_from compares Config.model_signature(weights_only=True): all of the signature but the preset's
    name and the sequence length, so a field added to the signature is checked here too."""
    from kgpt2.errors import UserError
    from kgpt2.training.checkpoints import CheckpointManager
    from kgpt2.training.continuation import init_checkpoint

    # tiny_run's embedding is padded to 64 rows (model.pad_vocabulary_to's default): an unpadded model is another shape
    unpadded = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=x", f"train.init_from={tiny_run}",
                                "model.pad_vocabulary_to=0")
    with pytest.raises(UserError, match=r"train.init_from: .*\(model.pad_vocabulary_to: 64 -> off\)"):
        init_checkpoint(unpadded)
    copy = shutil.copytree(tiny_preset, tmp_path / "same-preset")  # the same weights under another path
    other = make_tiny_config(tmp_path, copy, pydoc_shards, "run=y", f"train.init_from={tiny_run}",
                             "data.sequence_length=16")
    assert init_checkpoint(other).id == CheckpointManager(tiny_run).latest().id


def test_align_on_a_runs_demo_votes_takes_the_runs_model(tmp_path, capsys, monkeypatch, tiny_run):
    """`kgpt2 align align.loss=kto align.data=RUN/votes.jsonl align.init_run=RUN`, as docs/demo.md has it: the
    voted run's [model], [lora] and data.sequence_length come from its config.json, none repeated by hand; the
    same command on the finished align run says there is nothing more to do."""
    from kgpt2.serving.votes import append_vote, make_rating
    from kgpt2.training.checkpoints import CheckpointManager

    run = Path(shutil.copytree(tiny_run, tmp_path / "voted"))
    latest = CheckpointManager(run).latest().id
    for i, word in enumerate(["assert", "with", "for", "while", "if", "try", "import", "return", "global", "pass",
                              "raise", "del"]):
        append_vote(run, make_rating(f"The {word} statement", " is a statement.", "up" if i % 2 else "down",
                                     f"voted/{latest}", {"seed": i}))
    monkeypatch.chdir(tmp_path)
    argv = ["align", "align.loss=kto", "align.data=voted/votes.jsonl", "align.init_run=voted", "run=kto",
            "checkpoints_root=.", "align.steps=2", "align.heldout_fraction=0.3", "train.batch_size=4",
            "train.device=cpu", "train.precision=float32"]
    code, out, err = kgpt2(capsys, *argv)
    assert code == 0, err
    from kgpt2.run import load_run_config

    saved, voted = load_run_config(tmp_path / "kto"), load_run_config(run)
    from dataclasses import replace

    from kgpt2.run import same_files

    # The voted run's model, in the align run's own copy of its preset (the align run travels alone).
    assert replace(saved.model, preset=voted.model.preset) == voted.model and saved.lora == voted.lora
    assert Path(saved.model.preset) == tmp_path / "kto" / "preset" and same_files(run / "preset", saved.model.preset)
    assert saved.data.sequence_length == voted.data.sequence_length == 32
    assert re.search(r"\d+ held out examples? \(kto\)", out) and CheckpointManager(tmp_path / "kto").latest().step == 2
    assert f"starting from {latest} of run voted" in err, err  # the person sees which weights it aligned
    first = json.loads((tmp_path / "kto" / "align.json").read_text())

    code, out, err = kgpt2(capsys, *argv)  # again, finished: nothing more to do, and it says so
    assert code == 0 and "nothing more to do" in err, err
    assert "resuming" not in err and "preference data" in err, err  # the data is still read and checked
    assert json.loads((tmp_path / "kto" / "align.json").read_text()) == first and "held-out  after" in out
    assert [c.id for c in CheckpointManager(tmp_path / "kto").list()] == ["ckpt-2"]


# -- the wheel, installed into a fresh venv, used from a folder outside the checkout ----------------


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_trains_moves_and_continues_a_run(tmp_path, wheel_venv, tiny_preset, pydoc_tokenizer_dir,
                                                                tiny_overrides):
    venv = wheel_venv
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"KERAS_BACKEND": "jax"}

    def cli(*argv, cwd=work):
        r = subprocess.run([venv / "bin" / "kgpt2", *map(str, argv)], capture_output=True, text=True, cwd=cwd,
                           env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    where = subprocess.check_output([venv / "bin" / "python", "-c", "import kgpt2; print(kgpt2.__file__)"],
                                    text=True, cwd=work, env=env).strip()
    assert where.startswith(str(venv)), where  # the installed wheel, not a checkout
    cli("prepare", "--source", "pydoc", "--out", "shards", "--tokenizer", pydoc_tokenizer_dir)
    cli("train", *tiny_overrides, "run=q", f"model.preset={tiny_preset}", "data.shards=shards", "train.stages=[5]")
    shutil.move(str(work / "checkpoints" / "q"), str(tmp_path / "drive-q"))
    out = cli("generate", "--run", tmp_path / "drive-q", "--prompt", PROMPT, "--sampler", "greedy",
              "--max-new-tokens", 5, cwd=tmp_path)
    assert out.startswith(PROMPT) and len(out.rstrip("\n")) > len(PROMPT)  # greedy on a tiny model may add only spaces
    cli("train", "--run", tmp_path / "drive-q", 'train.stages=[5,"rest"]', cwd=tmp_path)
    state = json.loads(max((tmp_path / "drive-q").glob("ckpt-*/state.json"), key=lambda p: int(p.parent.name[5:])).read_text())
    assert state["stage"] == 2 and state["stage_end"]
