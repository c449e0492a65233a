"""Single-answer votes in the demo (thumbs up / down, for KTO) through gradio_client, and `kgpt2 align` on them.

The app runs in this process on copies of `tiny_run` (test_demo.make_demo_root):
votes on `tiny` for the voting rules, on `tiny-copy` for the KTO run, so each
test reads only its own records. The browser flow is in test_demo_browser.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_demo import PROMPT, alternate_arena_sides, compare_args, free_port, make_demo_root

pytestmark = pytest.mark.backend_neutral  # the demo's votes and arena (UI and files)

PROMPTS = ["The assert statement", "The with statement", "The for statement", "The while statement",
           "The if statement", "The try statement", "The import statement", "The return statement",
           "The global statement", "The lambda expression", "The class definition", "The yield expression"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_run):
    from kgpt2.demo import Demo, serve

    root = make_demo_root(tmp_path_factory.mktemp("votes-root"), tiny_run, evaluate=False)
    demo = Demo(root, "tiny", max_batch=4)
    app = serve(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    yield app.local_url, demo, root
    app.close()


@pytest.fixture
def client(served):
    from gradio_client import Client

    c = Client(served[0], verbose=False, download_files=False)  # its own session (gr.State)
    yield c
    c.close()


def _last_vote(root, run="tiny") -> dict:
    from kgpt2.serving.votes import read_votes

    return read_votes(root / run / "votes.jsonl")[-1]


def test_single_mode_answers_once_and_takes_one_thumb(served, client):
    _, demo, root = served
    a, b, status, info_a, info_b = client.predict(**compare_args(ckpt_a=demo.latest, single=True, seed=5),
                                                  api_name="/compare")
    assert a and b == "" and info_b == "" and "Thumb it up or down" in status and f"tiny/{demo.latest}" in info_a
    status, *_ = client.predict(api_name="/vote_a")
    assert "Vote not recorded" in status and "not a pair vote" in status
    status, *_ = client.predict(api_name="/thumb_up_b")
    assert "Vote not recorded" in status and "no answer B" in status
    status, info_a, info_b, summary = client.predict(api_name="/thumb_up_a")
    assert status.startswith("Recorded good answer for answer A") and "good answer 1" in summary
    rec = _last_vote(root)
    assert (rec["prompt"], rec["completion"], rec["label"], rec["choice"]) == (PROMPT, a, True, "up")
    assert (rec["model"], rec["mode"], rec["side"], rec["template"]) == (f"tiny/{demo.latest}", "single", "a", "plain")
    assert rec["settings"]["seed"] == 5 and rec["settings"]["max_new_tokens"] == 8 and rec["time"].endswith("+00:00")
    status, *_ = client.predict(api_name="/thumb_down_a")
    assert "Vote not recorded" in status and "already has its vote (good answer)" in status


def test_a_run_folder_that_refuses_the_vote_says_so_and_keeps_the_votes(served, client):
    _, demo, root = served
    votes = root / "tiny" / "votes.jsonl"
    aside = votes.with_name("votes-aside.jsonl")
    if votes.exists():
        votes.rename(aside)
    votes.mkdir()  # the write fails as on a read-only run, also for root (CI may run tests as root)
    try:
        client.predict(**compare_args(ckpt_a=demo.latest, single=True, seed=3), api_name="/compare")
        status, *_ = client.predict(api_name="/thumb_up_a")
    finally:
        votes.rmdir()
        if aside.exists():
            aside.rename(votes)
    assert status.startswith("**Vote not recorded:** cannot write") and "make the run folder writable" in status
    assert not [p.name for p in votes.parent.iterdir() if p.name.startswith(".votes")], "a temporary file was left"


def test_single_arena_mode_hides_the_drawn_model_until_its_thumb(served, client, monkeypatch):
    alternate_arena_sides(monkeypatch)
    _, demo, root = served
    drawn = set()
    for seed in range(6):
        a, b, status, info_a, _ = client.predict(**compare_args(ckpt_b=demo.latest, arena=True, single=True,
                                                                seed=seed), api_name="/compare")
        assert b == "" and "hidden until you vote" in info_a
        status, info_a, _, _ = client.predict(api_name="/thumb_down_a")
        rec = _last_vote(root)
        assert rec["model"] in info_a and rec["mode"] == "single-arena" and rec["label"] is False
        assert "It was model A" in status
        drawn.add(rec["model"])
    assert drawn == {"tiny/base", f"tiny/{demo.latest}"}, "the answering model is drawn from the two picks"


def test_thumbs_per_side_when_comparing_one_vote_per_answer(served, client):
    from kgpt2.serving.votes import read_votes

    _, demo, root = served
    votes = root / "tiny" / "votes.jsonl"
    a, b, status, info_a, info_b = client.predict(**compare_args(ckpt_b=demo.latest, arena=True, seed=1),
                                                  api_name="/compare")
    assert "rate each answer" in status
    status, info_a, info_b, _ = client.predict(api_name="/thumb_down_a")
    assert status.startswith("Recorded bad answer for answer A") and "hidden until you vote" in info_b
    assert "It was" not in status, "identities stay hidden until both answers have their votes"
    for refused in ("/vote_b", "/vote_both_bad", "/thumb_up_a"):
        status, *_ = client.predict(api_name=refused)
        assert "Vote not recorded" in status, refused
    n = len(read_votes(votes))
    status, info_a, info_b, summary = client.predict(api_name="/thumb_up_b")
    assert "Recorded good answer for answer B" in status and "It was model A" in status
    assert "hidden" not in info_a + info_b
    down, up = read_votes(votes)[-2:]
    assert len(read_votes(votes)) == n + 1
    assert (down["side"], down["completion"], down["label"]) == ("a", a, False) and down["model"] in info_a
    assert (up["side"], up["completion"], up["label"]) == ("b", b, True) and up["model"] in info_b
    assert up["mode"] == "arena"
    # A pair vote first judges both answers: no thumbs afterwards.
    client.predict(**compare_args(ckpt_b=demo.latest, seed=2), api_name="/compare")
    assert "Recorded" in client.predict(api_name="/vote_tie")[0]
    status, *_ = client.predict(api_name="/thumb_up_a")
    assert "Vote not recorded" in status and "judged both answers" in status


def test_page_buttons_follow_the_votes(served):
    from kgpt2.serving.arena import Match

    _, demo, _ = served
    assert demo.voting(None) == [False] * 8, "no answers yet (a new page, a picker changed): nothing to vote on"
    m = Match.draw(("tiny", "base"), ("tiny", demo.latest), arena=False)
    m.finished = True
    assert demo.voting(m) == [True] * 8
    m.rate("a", "up")
    assert demo.voting(m) == [False, False, True, True] + [False] * 4
    single = Match.draw(("tiny", "base"), ("tiny", demo.latest), arena=False, single=True)
    assert demo.voting(single) == [True, True, False, False] + [False] * 4
    m = Match.draw(("tiny", "base"), ("tiny", demo.latest), arena=False)
    m.finished = True
    m.record("tie")
    assert demo.voting(m) == [False] * 8


def test_the_status_counts_one_vote_and_two_votes(served, client):
    """It said "(1 votes)". `tiny-lora`'s votes.jsonl is this test's alone."""
    for count in ("(1 vote)", "(2 votes)"):
        client.predict(**compare_args(run_a="tiny-lora", run_b="tiny-lora", max_new=2), api_name="/compare")
        status, *_ = client.predict(api_name="/vote_tie")
        assert f"tiny-lora/votes.jsonl` {count}." in status, status


def test_chat_template_in_the_demo_prompts_as_generate_does_and_votes_keep_the_messages(served, client):
    from kgpt2.data.preference_pairs import read_preferences
    from kgpt2.generate import generate_from_run

    _, demo, root = served
    a, *_ = client.predict(**compare_args(ckpt_a=demo.latest, single=True, template="chat", sampler="greedy",
                                          max_new=8), api_name="/compare")
    want = generate_from_run(root / "tiny", PROMPT, demo.latest, sampler="greedy", max_new_tokens=8, template="chat")
    assert a == want, "the demo prompts a chat run with the ids kgpt2 generate uses (end-of-text ids)"
    client.predict(api_name="/thumb_up_a")
    rec = _last_vote(root)
    assert rec["messages"] == [{"role": "user", "content": PROMPT}] and rec["template"] == "chat"
    path = root / "chat-vote.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    _, singles = read_preferences(path)
    assert singles[0]["prompt"] == rec["messages"] and singles[0]["completion"] == a.strip()


def _cast_votes(client, latest) -> None:
    """Votes on run tiny-copy: thumbs in single mode, thumbs per side, both bad, a pair."""
    for i, prompt in enumerate(PROMPTS[:8]):
        client.predict(**compare_args(run_a="tiny-copy", ckpt_a=latest, prompt=prompt, seed=i, single=True),
                       api_name="/compare")
        assert "Recorded" in client.predict(api_name="/thumb_up_a" if i % 2 == 0 else "/thumb_down_a")[0]
    for i, prompt in enumerate(PROMPTS[8:10]):
        client.predict(**compare_args(run_a="tiny-copy", ckpt_b=latest, prompt=prompt, seed=i), api_name="/compare")
        assert "Recorded" in client.predict(api_name="/thumb_up_a")[0]
        assert "Recorded" in client.predict(api_name="/thumb_down_b")[0]
    for prompt, vote in ((PROMPTS[10], "/vote_both_bad"), (PROMPTS[11], "/vote_a")):
        client.predict(**compare_args(run_a="tiny-copy", ckpt_b=latest, prompt=prompt), api_name="/compare")
        assert "Recorded" in client.predict(api_name=vote)[0]


def _expected_examples(records) -> list[tuple]:
    """(prompt, completion, label) of every answer a vote judged, read from the records here (not by kgpt2)."""
    out = []
    for r in records:
        if r["choice"] in ("up", "down"):
            out.append((r["model_input"], r["completion"], r["choice"] == "up"))
        elif r["choice"] == "both_bad":
            out += [(r["model_input"], r["answer_a"], False), (r["model_input"], r["answer_b"], False)]
        elif r["choice"] in ("a", "b"):
            out += [(r["model_input"], r["chosen"], True), (r["model_input"], r["rejected"], False)]
    return out


def _numpy_logprobs(model, x) -> np.ndarray:
    """[N, 2] summed log-probs of the weighted targets: logits from the model, log-softmax in numpy."""
    n, _, t = x["token_ids"].shape
    logits = np.asarray(model.predict({"token_ids": x["token_ids"].reshape(-1, t),
                                       "padding_mask": x["padding_mask"].reshape(-1, t)}, verbose=0), "float64")
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, x["targets"].reshape(-1, t)[..., None], axis=-1)[..., 0]
    return (picked * x["weights"].reshape(-1, t)).sum(-1).reshape(n, 2)


def test_kto_align_on_demo_votes_matches_a_numpy_reference(served, client, tmp_path, tiny_preset, tiny_overrides,
                                                           kgpt2_cli):
    from kgpt2.model.models import load_tokenizer
    from kgpt2.run import load_model, load_run_config
    from kgpt2.serving.votes import read_votes
    from kgpt2.training.preferences import encode_preferences, reference_path

    _, demo, root = served
    _cast_votes(client, demo.latest)
    votes = root / "tiny-copy" / "votes.jsonl"
    want = _expected_examples(read_votes(votes))
    assert len(read_votes(votes)) == 8 + 4 + 2 and len(want) == 8 + 4 + 2 + 2  # records; examples

    # demo -> vote -> kgpt2 align, as a user runs it: the votes file, loss kto, from the run that answered.
    args = tiny_overrides + [f"model.preset={tiny_preset}", f"checkpoints_root={tmp_path}", "run=kto-votes",
                             f"align.data={votes}", "align.loss=kto", "align.steps=6", "align.heldout_fraction=0.3",
                             "train.batch_size=4", f"align.init_run={root / 'tiny-copy'}"]
    out = kgpt2_cli("-q", "align", *args)
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "kto-votes"
    result = json.loads((run_dir / "align.json").read_text())
    p = result["pairs"]
    assert result["loss"] == "kto" and p["too_long_dropped"] == 0 and p["train"] + p["heldout"] == len(want)
    held = f"{p['heldout']} held out example{'' if p['heldout'] == 1 else 's'} (kto)"
    assert p["unpaired"] == 8 + 4 + 2 and held in out.stdout
    before, after = result["heldout_before"], result["heldout_after"]
    assert before["loss"] == pytest.approx(0.5, abs=1e-6) and before["reward_accuracy"] == 0.0  # policy == reference

    # The numpy reference: held-out rows as align encodes them, log-probs and the KTO loss computed here.
    cfg = load_run_config(run_dir)
    rows = encode_preferences(cfg, *_read(cfg), load_tokenizer(cfg.model))
    labels = np.concatenate([rows.train_labels, rows.held_labels])
    assert int(labels.sum()) == sum(label for *_, label in want) and len(labels) == len(want)
    init_model, _, _ = load_model(root / "tiny-copy", demo.latest)
    ref = _numpy_logprobs(init_model, rows.held_x)
    with np.load(reference_path(run_dir)) as cached:
        np.testing.assert_allclose(cached["heldout"], ref, rtol=1e-4, atol=1e-4)
    aligned, _, _ = load_model(run_dir)
    pol = _numpy_logprobs(aligned, rows.held_x)
    beta = cfg.align.beta
    kl = max((pol[:, 1] - ref[:, 1]).mean(), 0.0)  # slot 1: mismatched completions
    ratio = pol[:, 0] - ref[:, 0]
    loss = np.where(rows.held_labels > 0.5, 1 - 1 / (1 + np.exp(-beta * (ratio - kl))),
                    1 - 1 / (1 + np.exp(-beta * (kl - ratio))))
    assert after["loss"] == pytest.approx(loss.mean(), rel=1e-4, abs=1e-6)
    assert after["loss"] != pytest.approx(0.5, abs=1e-7), "the policy moved"
    good = rows.held_labels > 0.5
    assert after["sign_accuracy"] == pytest.approx(np.mean(np.where(good, ratio > 0, ratio < 0)))
    if good.any() and (~good).any():
        ranked = [float(d > u) for d in ratio[good] for u in ratio[~good]]
        assert after["reward_accuracy"] == after["ranking_accuracy"] == pytest.approx(np.mean(ranked))


def _read(cfg):
    from kgpt2.data.preference_pairs import read_preferences

    return read_preferences(cfg.align.data, cfg.align.template)
