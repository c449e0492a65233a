"""`kgpt2 generate` says a bad setting before Keras and the model load, says what it loads meanwhile (stderr, not
-q), and `kgpt2 tokenizer` without its action names the action."""

import pytest

pytestmark = pytest.mark.backend_neutral

PROMPT = "The assert statement"


@pytest.mark.parametrize("options, sentence", [
    (["--temperature", "-1"], "kgpt2: error: generate.temperature must be above 0; got -1.0"),
    (["--top-p", "2"], "kgpt2: error: generate.top_p must be in (0, 1]; got 2.0"),
    (["--num-beams", "0", "--sampler", "beam"], "kgpt2: error: generate.num_beams must be at least 1; got 0"),
    (["--max-new-tokens", "-5"], "kgpt2: error: generate.max_new_tokens must be at least 0; got -5"),
])
def test_a_bad_setting_is_said_before_keras_or_the_model_load(tiny_run, kgpt2_cli, monkeypatch, options, sentence):
    import kgpt2.backend
    import kgpt2.generate

    started = []  # what the ~20 s before the old answer went on: the Keras import, then the model's load
    monkeypatch.setattr(kgpt2.backend, "import_keras_quietly", lambda: started.append("keras"))
    monkeypatch.setattr(kgpt2.generate, "load_for_generation", lambda *a, **k: started.append("model"))
    r = kgpt2_cli("generate", "--run", tiny_run, "--prompt", "hi", *options)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.splitlines() == [r.stderr.strip()] and r.stderr.startswith(sentence), r.stderr
    assert started == []


def test_generate_says_what_it_loads_on_stderr_unless_quiet(tiny_run, kgpt2_cli):
    argv = ["generate", "--run", tiny_run, "--prompt", PROMPT, "--sampler", "greedy", "--max-new-tokens", 4]
    said = kgpt2_cli(*argv)
    assert said.returncode == 0, said.stderr
    assert said.stderr.splitlines() == [f"kgpt2: loading the latest checkpoint of {tiny_run} ..."]
    assert said.stdout.startswith(PROMPT)  # stdout: the text alone, for pipes
    quiet = kgpt2_cli("-q", *argv)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert quiet.stdout == said.stdout
    picked = kgpt2_cli(*argv, "--checkpoint", "stage-1")
    assert picked.returncode == 0, picked.stderr
    assert picked.stderr.splitlines() == [f"kgpt2: loading checkpoint stage-1 of {tiny_run} ..."]


TOKENIZER_ACTION = "kgpt2 tokenizer train --source ... --out ..."
PRETRAIN_ACTIONS = "kgpt2 pretrain init --config FILE, or kgpt2 pretrain summary --run RUN"


@pytest.mark.parametrize("argv, actions", [(["tokenizer", "--source", "text.txt", "--out", "tok"], TOKENIZER_ACTION),
                                           (["tokenizer"], TOKENIZER_ACTION), (["pretrain"], PRETRAIN_ACTIONS),
                                           (["pretrain", "--run", "r"], PRETRAIN_ACTIONS)])
def test_a_verb_without_its_action_names_it(kgpt2_cli, tmp_path, argv, actions):
    """argparse said "the following arguments are required: action" (for pretrain: "action, key=value")."""
    r = kgpt2_cli(*argv, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines()[-1] == f"kgpt2 {argv[0]}: error: the action is missing: {actions}"
    assert list(tmp_path.iterdir()) == []


def test_pretrain_init_with_a_run_says_init_takes_none(kgpt2_cli, tmp_path):
    """`pretrain init --run X` ignored --run and then named the default run's folder (checkpoints/run)."""
    r = kgpt2_cli("pretrain", "init", "--run", "mine", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines()[-1].startswith("kgpt2: error: pretrain init takes no --run (that is for pretrain "
                                                "summary)"), r.stderr
    assert list(tmp_path.iterdir()) == []
