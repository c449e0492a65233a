"""What `kgpt2 align` answers to the options and files of the other verbs.

Before: `kgpt2 align --shards DIR` (just after `kgpt2 prepare`) or train's `--run` / `--resume` got argparse's
"unrecognized arguments: --shards", which says nothing of what align reads; a trained run's folder given as
align.data "holds no votes.jsonl", where align.init_run was meant.
"""

from __future__ import annotations

import json

import pytest

from kgpt2.errors import UserError

pytestmark = pytest.mark.backend_neutral  # the command line and the data files, before any model

TAKES = ("its data is align.data=[\"FILE\", ...] (preference files of prompt, chosen and rejected: JSON Lines, a "
         "JSON array or CSV) or a demo run's folder, and it takes --config, --device and key=value overrides")


@pytest.mark.parametrize("argv, sentence", [
    (["--shards", "data/shards", "run=a"], f"kgpt2 align has no --shards option: {TAKES}"),
    (["--shards=data/shards", "-q"], f"kgpt2 align has no --shards option: {TAKES}"),
    (["--run", "checkpoints/a", "--resume"], "kgpt2 align has no --run or --resume options: an align run resumes when "
                                             "its command is run again (or with --config RUN/config.json); " + TAKES),
])
def test_options_align_does_not_take_are_answered_with_what_it_takes(argv, sentence, tmp_path, kgpt2_cli):
    r = kgpt2_cli("align", *argv, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"kgpt2: error: {sentence}"
    assert not any(tmp_path.iterdir())


def test_align_options_still_parse():
    from kgpt2.cli import parse_args

    args = parse_args(["align", "a=1", "--device", "cpu", "-q", "b=2"])
    assert (args.overrides, args.device, args.quiet) == (["a=1", "b=2"], "cpu", True)


def test_a_trained_run_given_as_preference_data_points_to_align_init_run(tmp_path):
    from kgpt2.data.preference_pairs import read_preferences

    run = tmp_path / "sft"
    (run / "ckpt-10").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": {}, "train": {}}))
    (run / "ckpt-10" / "state.json").write_text(json.dumps({"step": 10}))
    with pytest.raises(UserError) as e:
        read_preferences([str(run)])
    assert str(e.value) == (f"'{run}' is a kgpt2 run without demo votes (no votes.jsonl), not preference data: to "
                            f"start from its weights give align.init_run={run}; align.data takes preference files "
                            "(prompt/chosen/rejected JSON Lines, a JSON array or CSV) or a demo run's folder (its "
                            "votes.jsonl)")
    (run / "votes.jsonl").write_text(json.dumps({"prompt": "Q", "chosen": "yes", "rejected": "no"}) + "\n")
    assert read_preferences([str(run)])[0] == [{"prompt": "Q", "chosen": "yes", "rejected": "no"}]
