"""`kgpt2 align` given preference files that leave nothing to train on: one sentence saying why, per reason.

It used to say "none of the 0 usable preference pairs (0 prompts) falls in the held-out share" whatever the
cause, and suggest changing align.heldout_fraction.
"""

import json
import re

import pytest

from kgpt2.errors import UserError

pytestmark = pytest.mark.backend_neutral  # files read before any model is built; the tokenizer only counts tokens


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def align_cli(kgpt2_cli, tiny_preset, tmp_path):
    def run(data, *overrides):
        return kgpt2_cli("align", f"model.preset={tiny_preset}", f"align.data={data}", "lora.enabled=false",
                         f"checkpoints_root={tmp_path / 'runs'}", "run=a", "data.sequence_length=32", *overrides,
                         cwd=tmp_path)
    return run


def test_files_without_a_usable_pair_say_why_with_counts(tmp_path, align_cli):
    same = _jsonl(tmp_path / "same.jsonl", [{"prompt": "a", "chosen": "x", "rejected": "x"},
                                           {"prompt": "b", "chosen": "y ", "rejected": "y"},  # equal once stripped
                                           {"prompt": "c", "chosen": None, "rejected": None, "choice": "tie"}])
    result = align_cli(same.name)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "kgpt2: error: no usable preference pair in 'same.jsonl': of 3 records read, 2 have chosen == rejected "
        "(nothing to prefer) and 1 has a null chosen or rejected (a tie vote, no preference)")
    assert "held-out" not in result.stderr


@pytest.mark.parametrize("text", ["", "\n\n", "[]"], ids=["empty", "blank-lines", "empty-list"])
def test_an_empty_preference_file_is_named_empty(tmp_path, align_cli, text):
    (tmp_path / "prefs.json").write_text(text)
    result = align_cli("prefs.json")
    assert result.returncode == 2
    assert "'prefs.json' holds no preference records (give JSON or JSON Lines records with prompt, chosen and " \
           "rejected)" in result.stderr and "held-out" not in result.stderr


def test_pairs_whose_prompts_fill_the_window_say_so(tmp_path, align_cli):
    long = _jsonl(tmp_path / "long.jsonl", [{"prompt": f"word{i} " * 200, "chosen": "yes", "rejected": "no"}
                                           for i in range(4)])
    result = align_cli(long.name)
    assert result.returncode == 2
    assert "all 4 pairs were dropped: the prompt alone fills data.sequence_length tokens" in result.stderr


def test_single_answers_given_to_a_paired_loss_say_only_kto_reads_them(tmp_path, align_cli):
    from kgpt2.serving.votes import append_vote, make_rating, make_record

    demo = tmp_path / "demo"  # a demo run's votes: thumbs and "both bad", no A/B preference
    append_vote(demo, make_rating("Say hi.", "hi", "up", "r/base", {"seed": 0}))
    append_vote(demo, make_record("Say hi.", "hello", "hey", "both_bad", "r/base", "r/ckpt-9", {"seed": 0}))
    result = align_cli("demo")
    assert result.returncode == 2
    assert "no preference pairs to train on: the records are single answers (thumb votes, \"both bad\" votes), " \
           "which only align.loss = \"kto\" reads" in result.stderr


def test_one_unpaired_record_is_one_record_in_the_sentence():
    from kgpt2.data.preference_pairs import refuse_unpaired

    with pytest.raises(UserError, match=r"^1 record is unpaired \(completion \+ label\): only align.loss = \"kto\" "
                                        r"trains on it, not \"dpo\"$"):
        refuse_unpaired([{"prompt": "a", "completion": "x", "label": True}])


@pytest.mark.parametrize("content, says", [
    ('[{"instruction": "Add.", "input": "1 + 1", "output": "2"}]', "; it has instruction, input, output"),
    ("[1, 2]", "[record 1]: expected chosen and rejected fields (or completion and label for KTO); it is a JSON "
               "number, not an object"),
], ids=["instruction-data", "not-objects"])
def test_a_record_that_is_no_pair_says_what_it_holds(tmp_path, content, says):
    """Instruction data given as preference pairs: the sentence named only the fields it wanted."""
    from kgpt2.data.preference_pairs import read_preferences

    (tmp_path / "data.json").write_text(content)
    with pytest.raises(UserError, match=re.escape(says)):
        read_preferences(tmp_path / "data.json")


def test_a_folder_without_votes_is_named_as_a_folder(tmp_path):
    from kgpt2.data.preference_pairs import read_preferences

    with pytest.raises(UserError, match=re.escape(f"preference folder '{tmp_path}' holds no votes.jsonl (the votes "
                                                  "a demo run records)")):
        read_preferences(tmp_path)
