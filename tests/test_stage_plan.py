"""The stage plan for any corpus size (kgpt2.data.stage_plan), and `train --dry-run` on a 300-article corpus."""

import json
import math

import pytest

from kgpt2.data.stage_plan import plan_stages
from kgpt2.errors import UserError

pytestmark = pytest.mark.backend_neutral  # stage planning (arithmetic over shard sizes)

SEED_PLAN = [10, 10000, 80000, "rest"]


def sizes(plan):
    return [s.num_articles for s in plan]


def assert_partition(plan, total):
    """Stages are contiguous from article 0, each takes at least one, the last ends at `total`."""
    assert plan[0].first == 0 and plan[-1].end == total
    assert [s.first for s in plan[1:]] == [s.end for s in plan[:-1]]
    assert all(s.num_articles >= 1 for s in plan)


@pytest.mark.parametrize("total", [10, 300, 927, 90_011, 120_000])
def test_seed_plan_has_its_shape_on_any_corpus(total):
    plan = plan_stages(SEED_PLAN, total)
    assert_partition(plan, total)
    first, *others = sizes(plan)
    floor = max(1, math.ceil(0.05 * total))
    assert first <= 10  # a small first stage
    assert all(n >= floor for n in others), (sizes(plan), floor)  # nothing but the first under 5%
    assert others[0] <= others[1]  # growing stages
    assert others[-1] >= floor  # a real remainder
    assert plan.why


def test_seed_plan_as_written_where_it_fits():
    plan = plan_stages(SEED_PLAN, 120_000)
    assert sizes(plan) == [10, 10_000, 80_000, 29_990]
    assert plan.why == "the plan fits the 120,000 train articles as written"
    assert plan_stages(["rest"], 1).why == "the plan fits the 1 train article as written"  # one text file: Shakespeare
    assert sizes(plan_stages(SEED_PLAN, 119_924)) == [10, 10_000, 80_000, 29_914]  # the seed's corpus


def test_small_corpus_gets_a_proportional_plan_not_a_one_article_stage():
    plan = plan_stages(SEED_PLAN, 927)  # issue 16: "scale" used to give 1 / 102 / 823 / 1
    assert sizes(plan) == [10, 77, 611, 229]
    # 10,000 : 80,000 kept as 1 : 8 (to rounding), "rest" a quarter of the 917 scaled articles
    assert abs(611 / 77 - 8) < 0.1 and abs(229 - 917 / 4) < 1
    assert "927 train articles, fewer than the plan's 90,011" in plan.why
    assert "first stage kept at its 10 articles" in plan.why
    assert sizes(plan_stages(SEED_PLAN, 300)) == [10, 24, 193, 73]


def test_a_one_article_rest_is_scaled_too():
    plan = plan_stages(SEED_PLAN, 90_011)  # as written "rest" would get 1 article
    assert sizes(plan) == [10, 7_500, 60_001, 22_500]
    assert 'leaves "rest" 1 of the 90,011 train articles, under 5%' in plan.why


def test_tiny_corpus_still_has_every_stage():
    plan = plan_stages(SEED_PLAN, 10)
    assert sizes(plan) == [1, 1, 6, 2]  # nothing to keep "tiny" at 10 of 10 articles
    with pytest.raises(UserError, match="3 training articles are too few for train.stages' 4 stages; train on them in one: 'train.stages=\\[\"rest\"\\]'"):
        plan_stages(SEED_PLAN, 3)


def test_reject_refuses_with_the_numbers():
    with pytest.raises(UserError, match="the corpus has 300 train articles, fewer than the plan's 90,011"):
        plan_stages(SEED_PLAN, 300, oversize="reject")
    with pytest.raises(UserError, match='leaves "rest" 1 of the 90,011'):
        plan_stages(SEED_PLAN, 90_011, oversize="reject")
    assert sizes(plan_stages(SEED_PLAN, 120_000, oversize="reject")) == [10, 10_000, 80_000, 29_990]
    with pytest.raises(UserError, match="train.oversize must be one of scale, reject"):
        plan_stages(SEED_PLAN, 300, oversize="shrink")


@pytest.mark.parametrize("total", [300, 927, 90_011, 120_000])
def test_fractions_percentages_and_counts(total):
    plan = plan_stages([10, "8%", 0.5, "rest"], total)
    assert_partition(plan, total)
    assert sizes(plan)[:3] == [10, round(0.08 * total), round(0.5 * total)]
    assert sizes(plan) == sizes(plan_stages([10, 0.08, "50%", "rest"], total))
    assert "as written" in plan.why


def test_counts_without_rest():
    plan = plan_stages([100, 200], 927)
    assert sizes(plan) == [100, 200] and plan[-1].end == 300
    assert "the last 627 articles are not used" in plan.why
    scaled = plan_stages([100, 200], 150)  # too big, no "rest": the counts fill the corpus
    assert sizes(scaled) == [50, 100]


def test_scaled_plan_keeps_fractions_and_floors_small_counts():
    plan = plan_stages([5, "50%", 100, 10_000, "rest"], 300)
    assert_partition(plan, 300)
    n = sizes(plan)
    assert n[0] == 5 and n[1] == 150  # tiny first stage and the fraction as written
    assert n[2] == 15  # 100 : 10,000 would be 1 article: floored at 5% of 300
    assert n[3] > n[4] >= 15


@pytest.mark.parametrize("plan, message", [
    (["rest", 5], "only be the last"),
    ([], "train.stages must be a non-empty list"),
    ([10, "abc%", "rest"], r"train.stages\[1\] = 'abc%' is not a percentage"),
    ([10, "150%"], r"train.stages\[1\] \(a percentage\) is a fraction 1.5"),
    ([0.6, "50%", "rest"], "add up to 110% of the corpus"),
    ([0, "rest"], "at least one article"),
    ([True, "rest"], "must be an article count"),
    ([1.5, "rest"], "must be in \\(0, 1\\]"),
    (["half", "rest"], "must be an article count"),
    (["98%", "rest"], 'leaves "rest" 6 of the 300'),
    ([2, "96%", "rest"], "leave 10 articles of 300 for 1 more stage, under 5% of the corpus a stage"),
])
def test_bad_plans_are_one_clear_sentence(plan, message):
    with pytest.raises(UserError, match=message):
        plan_stages(plan, 300)


# -- a real 300-article corpus: PubMed articles (memsum_pubmed_300), each cut to two sentences


@pytest.fixture(scope="module")
def pubmed_300(tmp_path_factory, shared_data, pydoc_tokenizer):
    """The 300 PubMed articles of ../shared/data, all in the train split, first sentences only (fast)."""
    from kgpt2.data.shards import prepare

    folder = tmp_path_factory.mktemp("pubmed300")
    records = []
    for split in ("train", "val", "test"):
        for line in (shared_data / "pubmed" / "memsum_pubmed_300" / f"{split}.jsonl").open(encoding="utf-8"):
            r = json.loads(line)
            records.append(json.dumps({"text": r["text"][:2], "summary": r["summary"][:1]}))
    (folder / "pubmed300.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    manifest = prepare(str(folder / "pubmed300.jsonl"), folder / "shards", pydoc_tokenizer, splits="train", progress=False)
    assert manifest["splits"]["train"]["num_articles"] == 300
    return folder / "shards"


def test_dry_run_prints_a_sensible_default_plan_for_300_articles(tmp_path, pubmed_300, tiny_preset, kgpt2_cli):
    r = kgpt2_cli("train", "--dry-run", "--config", "pubmed_lora", f"data.shards={pubmed_300}",
                  f"model.preset={tiny_preset}", "data.sequence_length=32", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "stage plan [10, 10000, 80000, 'rest']"
    assert lines[1].startswith("why: the corpus has 300 train articles, fewer than the plan's 90,011")
    # pubmed_lora accumulates 4 batches a step: both are counted
    assert lines[2].split() == ["stage", "articles", "range", "tokens", "batches", "updates", "epochs"]
    table = [line.split() for line in lines[3:7]]
    assert [int(row[0]) for row in table] == [1, 2, 3, 4]
    assert [int(row[1]) for row in table] == [10, 24, 193, 73]
    assert [row[2] for row in table] == ["0..9", "10..33", "34..226", "227..299"]  # as `kgpt2 train` logs them
    from kgpt2.data.shards import ShardSet

    split = ShardSet(pubmed_300).split("train")
    ends = [0, 10, 34, 227, 300]
    tokens = [int(row[3].replace(",", "")) for row in table]
    assert tokens == [split.token_range(a, b)[1] - split.token_range(a, b)[0] for a, b in zip(ends, ends[1:])]
    steps = [int(row[4].replace(",", "")) for row in table]
    assert all(s >= 1 for s in steps) and lines[7].startswith(f"{sum(steps):,} batches in all (train.max_steps "
                                                             f"counts batches), {sum(steps) // 4:,} optimizer steps")
    assert not list(tmp_path.iterdir())  # a dry run makes nothing


@pytest.mark.slow
def test_default_plan_trains_on_300_articles(tmp_path, pubmed_300, tiny_preset, make_tiny_config):
    from kgpt2.train import train
    from kgpt2.training.checkpoints import CheckpointManager
    from kgpt2.training.training_data import describe_plan

    cfg = make_tiny_config(tmp_path, tiny_preset, pubmed_300, "run=p300", "train.eval_batches=0",
                           "train.batch_size=32", "data.sequence_length=64")
    assert cfg.train.stages == SEED_PLAN and cfg.train.oversize == "scale"  # the defaults
    planned = describe_plan(cfg)
    result = train(cfg, verbose=0)
    assert result.global_step == sum(row["steps"] for row in planned) > 0
    stage_ends = [c for c in CheckpointManager(cfg.run_dir).list() if c.state.get("stage_end")]
    assert len(stage_ends) == 4
    assert sorted((cfg.run_dir).glob("stage-*.weights.h5"))[-1].name == "stage-4.weights.h5"
    # A run whose plan resolved otherwise (an older kgpt2 scaled it differently) is not resumed on other articles.
    state_file = CheckpointManager(cfg.run_dir).latest().path / "state.json"
    state = json.loads(state_file.read_text())
    assert state["stage_ends"] == [10, 34, 227, 300]
    state_file.write_text(json.dumps(state | {"stage_ends": [1, 103, 926, 927]}))
    with pytest.raises(UserError, match=r"its stages ended at articles \[1, 103, 926, 927\], this plan at \[10, 34, 227, 300\]"):
        train(cfg, verbose=0)
