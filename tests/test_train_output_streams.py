"""What `kgpt2 train` and `kgpt2 quickstart` print, and where: one progress source on stderr when the output is a
log (a file, `| tee`, a Colab `!kgpt2 train` cell), and nothing but results and warnings under -q."""

import json
import re

import pytest

from kgpt2.errors import UserError

pytestmark = pytest.mark.backend  # Keras' fit loop writes its own lines differently on each backend


def _train_argv(root, preset, shards, tiny_overrides, *extra):
    shape_free = [o for o in tiny_overrides if not o.startswith("model.")]  # a preset brings its own shape
    return ["train", f"model.preset={preset}", f"data.shards={shards}", f"checkpoints_root={root}", "run=r",
            *shape_free, *extra]


def test_a_logged_train_has_kgpt2s_progress_lines_only(kgpt2_cli, tmp_path, tiny_preset, pydoc_shards,
                                                        tiny_overrides):
    """Written to files (not a terminal), Keras' own "3/3 - 1s - 273ms/step - accuracy ... loss ..." came on stdout
    beside kgpt2's lines on stderr, and its "3/3" counted the steps since the last checkpoint, not the plan's."""
    argv = _train_argv(tmp_path, tiny_preset, pydoc_shards, tiny_overrides, "train.stages=[4, 6]",
                       "train.checkpoint_every=3", "train.eval_batches=1")
    done = kgpt2_cli(*argv)
    assert done.returncode == 0, done.stderr
    assert "/step" not in done.stdout and "loss:" not in done.stdout, done.stdout
    # each fit (cut at every checkpoint: "steps 1..3 of N", "steps 4..6 of N", ...) ends on a line of its last step
    fits = [int(last) for last in re.findall(r"stage-\d/2, epoch 1/1: steps? (?:\d+\.\.)?(\d+) of \d+", done.stderr)]
    ends = re.findall(r"stage-(\d): step (\d+) of \d+ \(\d+\.\d%\), loss \d+\.\d{4}, accuracy \d\.\d{4}", done.stderr)
    assert len(fits) > 2 and [int(step) for _, step in ends] == fits, done.stderr
    assert {stage for stage, _ in ends} == {"1", "2"}


def test_a_logged_align_has_kgpt2s_progress_lines_only(kgpt2_cli, tmp_path, tiny_preset):
    """The same for `kgpt2 align`: Keras' "2/2 - 3s - loss ..." came on stdout, counting one segment's steps."""
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({"prompt": f"Say {i} \n", "chosen": f" {i} is a number.",
                                         "rejected": f" the with {i}"}) + "\n" for i in range(16)))
    done = kgpt2_cli("align", f"model.preset={tiny_preset}", f"checkpoints_root={tmp_path}", "run=a",
                     f'align.data=["{prefs}"]', "align.steps=4", "train.checkpoint_every=2", "train.batch_size=4",
                     "align.heldout_fraction=0.25", "data.sequence_length=32", "train.precision=float32",
                     "train.device=cpu", "lora.enabled=false")
    assert done.returncode == 0, done.stderr
    assert "/step" not in done.stdout and "loss:" not in done.stdout, done.stdout
    ends = re.findall(r"align: step (\d+) of 4 \(\d+\.\d%\), loss \d+\.\d{4}", done.stderr)
    assert ends == ["2", "4"], done.stderr  # one line at each segment's end, in the plan's steps


def test_a_one_step_fit_ends_on_a_line_without_a_rate():
    """A fit of one step has no rate (its only batch compiles): its end line has no tokens/s rather than a made-up
    one. A last step that already was a minute's line is not said twice."""
    from kgpt2.training.progress_lines import ProgressLines

    lines, clock = [], iter([0.0, 1.0, 0.0, 1.0, 2.0, 3.0, 4.0]).__next__
    one = ProgressLines("stage-1", 6, 10, 64, say=lines.append, clock=clock, at_end=True)
    one.on_train_begin()
    one.on_train_batch_end(0, {"loss": 2.5, "accuracy": 0.25})
    one.on_train_end({"loss": 2.5, "accuracy": 0.25})
    assert lines == ["stage-1: step 7 of 10 (70.0%), loss 2.5000, accuracy 0.2500"]
    two = ProgressLines("stage-1", 7, 10, 64, every_s=0.0, say=lines.append, clock=clock, at_end=True)
    two.on_train_begin()
    for batch in range(2):
        two.on_train_batch_end(batch, {"loss": 2.0, "accuracy": 0.5})
    two.on_train_end({"loss": 2.0, "accuracy": 0.5})
    assert lines[1:] == ["stage-1: step 9 of 10 (90.0%), loss 2.0000, accuracy 0.5000, 64 tokens/s, "
                         "about < 1 min to the end of the plan"]


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_quickstart_prepares_without_a_progress_bar(kgpt2_cli, monkeypatch, tmp_path, pydoc_tokenizer, quiet):
    """`kgpt2 -q quickstart` still drew prepare's progress bar ("prepare pydoc: 79 docs ...") on stderr."""
    import kgpt2.quickstart

    def stop(cfg, verbose="auto"):
        raise UserError("stopped before training: what prepare printed is what this test checks")

    monkeypatch.setattr(kgpt2.quickstart, "build_preset", lambda cfg: None)  # the tokenizer below stands for it
    monkeypatch.setattr(kgpt2.quickstart, "load_tokenizer", lambda model: pydoc_tokenizer)
    monkeypatch.setattr(kgpt2.quickstart, "train", stop)
    done = kgpt2_cli(*(["-q"] if quiet else []), "quickstart", cwd=tmp_path)
    assert done.returncode == 2 and "stopped before training" in done.stderr
    assert (tmp_path / "checkpoints" / "quickstart" / "shards").is_dir()  # prepare ran
    assert ("prepare pydoc" in done.stderr) is not quiet, done.stderr
