"""What a `kgpt2` command imports: no Keras for the verbs that need none, no TensorFlow on JAX.

Each test starts `kgpt2` in a subprocess with the backend it names, so the file runs once (backend_neutral).
"""

import os
import shutil
import subprocess
import sys

import pytest

from kgpt2.run_logs import read_steps

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
    assert r.returncode == 0 and not r.stderr, r.stderr  # nothing from TensorFlow's C++ start-up either
    assert r.stdout.startswith("The") and r.stdout.splitlines()[-1] == "0 ['keras', 'keras_hub', 'jax']", r.stdout
    r = subprocess.run([sys.executable, "-c", NO_KERAS, "-q", "train", "--run", str(run), "train.stages=[5, 10, 10]"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "0 ['keras', 'keras_hub', 'jax']", (r.stdout, r.stderr)
    assert read_steps(run)["stage"].max() == 3


def test_a_verb_with_an_unknown_keras_import_is_refused_when_registered():
    from kgpt2.cli import VERBS, verb

    with pytest.raises(ValueError, match="keras=True"):  # the old bool form
        verb("bogus", "never registered", keras=True)
    assert "bogus" not in VERBS
