"""What a `kgpt2` command imports: no Keras for the verbs that need none, no TensorFlow on JAX.

Each test starts `kgpt2` in a subprocess with the backend it names, so the file runs once (backend_neutral).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from kgpt2.training.run_logs import read_steps

pytestmark = pytest.mark.backend_neutral


NO_KERAS = "import sys; from kgpt2.cli import main; code = main(sys.argv[1:]); " \
           "print(code, [m for m in ('keras', 'keras_hub', 'tensorflow', 'jax') if m in sys.modules])"


def test_verbs_that_need_no_keras_never_import_it(tmp_path):
    from kgpt2.cli import VERBS

    (tmp_path / "text.txt").write_text("To be, or not to be, that is the question.")
    runs = {"recipes": ["recipes"],
            "tokenizer": ["tokenizer", "train", "--char", "--source", "text.txt", "--out", "tok"]}
    assert {name for name, (_, _, keras, _) in VERBS.items() if keras == "never"} == set(runs)  # each one run below
    for argv in runs.values():
        r = subprocess.run([sys.executable, "-c", NO_KERAS, *argv], capture_output=True, text=True, cwd=tmp_path,
                           timeout=120)
        assert r.returncode == 0 and r.stdout.splitlines()[-1] == "0 []", (argv, r.stdout, r.stderr)


def test_commands_on_jax_answer_and_train_without_importing_tensorflow(tiny_run, tmp_path):
    """keras-hub imports TensorFlow when it can (~3.8 s and ~590 MB of a process), and Keras asks for it to seed and
    to serialise configs, though kgpt2 on JAX needs none of it: `kgpt2 generate`, and `kgpt2 train` continuing a
    copied run by a stage (its TensorBoard events included), finish with TensorFlow never imported; imported after
    (as Keras may), it comes without its C++ start-up lines."""
    env = dict(os.environ, KERAS_BACKEND="jax")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    generate = ["generate", "--run", str(run), "--prompt", "The", "--sampler", "greedy", "--max-new-tokens", "3"]
    r = subprocess.run([sys.executable, "-c", NO_KERAS + "; import tensorflow", *generate], capture_output=True,
                       text=True, cwd=tmp_path, env=env, timeout=300)
    # kgpt2's one progress line, and nothing from TensorFlow's C++ start-up
    assert r.returncode == 0 and r.stderr == f"kgpt2: loading the latest checkpoint of {run} ...\n", r.stderr
    assert r.stdout.startswith("The") and r.stdout.splitlines()[-1] == "0 ['keras', 'keras_hub', 'jax']", r.stdout
    r = subprocess.run([sys.executable, "-c", NO_KERAS, "-q", "train", "--run", str(run), "train.stages=[5, 10, 10]"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "0 ['keras', 'keras_hub', 'jax']", (r.stdout, r.stderr)
    assert read_steps(run)["stage"].max() == 3


# keras-hub's own download calls, served from a local preset folder: the rest of its loading code runs as for a user.
SERVED_HUB = """import os, sys, kagglehub, huggingface_hub
from huggingface_hub.utils import EntryNotFoundError
asked = []
def kaggle(handle, path=None):
    asked.append(handle)
    return os.path.join(PRESET, path or "")
def hub(repo_id, filename, **_):
    asked.append(repo_id)
    if not os.path.exists(os.path.join(PRESET, filename)):
        raise EntryNotFoundError(filename)
    return os.path.join(PRESET, filename)
kagglehub.model_download, huggingface_hub.hf_hub_download = kaggle, hub
import kgpt2.model.hf_configs
kgpt2.model.hf_configs.unreachable_hub_host = lambda: None  # the Hub is served here, so it is reachable
from kgpt2.cli import main
code = main(sys.argv[1:])
print(code, sorted(set(asked)), [m for m in ('keras', 'keras_hub', 'tensorflow', 'jax') if m in sys.modules])
"""


@pytest.mark.parametrize("preset, handle", [("gpt2_base_en", "keras/gpt2/keras/gpt2_base_en/3"),
                                            ("kaggle://someone/gpt2/keras/tiny/1", "someone/gpt2/keras/tiny/1"),
                                            ("hf://someone/gpt2-tiny", "someone/gpt2-tiny")])
def test_hub_presets_download_and_train_on_jax_without_tensorflow(preset, handle, tiny_preset, pydoc_shards,
                                                                   tiny_overrides, tmp_path):
    """A preset by name, a Kaggle handle and a Hugging Face handle go to keras-hub's download (here served from the
    tiny preset's folder), train, and keep their name in the run; keras-hub would import TensorFlow for the hf://
    handle to ask about its URL scheme (kgpt2 hides it)."""
    script = f"PRESET = {str(tiny_preset)!r}\n" + SERVED_HUB
    # No model.* shape keys: a preset brings its own (they are refused with a preset; gpt2_base_en's is known by name)
    overrides = [o for o in tiny_overrides if not o.startswith("model.")]
    argv = ["-q", "train", *overrides, f"model.preset={preset}", f"data.shards={pydoc_shards}",
            f"checkpoints_root={tmp_path}", "run=hub", "train.stages=[5]"]
    r = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, KERAS_BACKEND="jax"), timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == f"0 ['{handle}'] ['keras', 'keras_hub', 'jax']", (r.stdout, r.stderr)
    assert json.loads((tmp_path / "hub" / "config.json").read_text())["model"]["preset"] == preset
    assert read_steps(tmp_path / "hub")["step"].max() > 0


def test_a_verb_with_an_unknown_keras_import_is_refused_when_registered():
    from kgpt2.cli import VERBS, verb

    with pytest.raises(ValueError, match="keras=True"):  # the old bool form
        verb("bogus", "never registered", keras=True)
    assert "bogus" not in VERBS
