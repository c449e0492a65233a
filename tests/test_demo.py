"""The Gradio demo through its API: served on a loopback port, driven by gradio_client.

The app runs in this process on copies of the `tiny_run` fixture (votes never
land in the shared run): `tiny` (evaluated), `tiny-copy` (same base) and
`tiny-lora` (another base: LoRA layers on the same preset). The browser flows
are in test_demo_browser.py, the 20-client load test in test_demo_load.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kgpt2.errors import UserError

pytestmark = pytest.mark.backend_neutral  # the demo's UI over generate/evaluate, which run on both backends elsewhere

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The assert statement"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compare_args(run_a="tiny", ckpt_a="base", run_b="tiny", ckpt_b="base", arena=False, prompt=PROMPT, input_text="",
                 template="plain", sampler="top_p", max_new=8, seed=3, num_beams=2, single=False, **kw) -> dict:
    """/compare's parameters by their documented names."""
    return dict(run_a=run_a, ckpt_a=ckpt_a, run_b=run_b, ckpt_b=ckpt_b, arena=arena, prompt=prompt,
                input_text=input_text, template=template, sampler=sampler, temperature=kw.get("temperature", 0.8),
                top_k=kw.get("top_k", 50), top_p=kw.get("top_p", 0.95), num_beams=num_beams, max_new_tokens=max_new,
                seed=seed, single=single)


def make_demo_root(root: Path, tiny_run: Path, evaluate: bool = True) -> Path:
    shutil.copytree(tiny_run, root / "tiny")
    if evaluate:
        from kgpt2.evaluate import evaluate_run

        evaluate_run(root / "tiny", checkpoints="all", split="test", compare_base=True, max_batches=2)
    shutil.copytree(tiny_run, root / "tiny-copy")  # same base: picking it must not build a model
    shutil.copytree(tiny_run, root / "tiny-lora", ignore=shutil.ignore_patterns("ckpt-*"))
    cfg = json.loads((root / "tiny-lora" / "config.json").read_text())
    cfg["lora"]["enabled"] = True  # another base, kept loaded beside the first
    (root / "tiny-lora" / "config.json").write_text(json.dumps(cfg))
    (root / "not-a-run").mkdir()
    return root


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory, tiny_run) -> Path:
    return make_demo_root(tmp_path_factory.mktemp("demo-root"), tiny_run)


@pytest.fixture(scope="module")
def server(demo_root):
    from kgpt2.demo import Demo, serve

    demo = Demo(demo_root, "tiny", max_batch=4)
    app = serve(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    yield app.local_url, demo, app
    app.close()


@pytest.fixture
def client(server):
    from gradio_client import Client

    c = Client(server[0], verbose=False, download_files=False)  # its own session (gr.State)
    yield c
    c.close()


def test_every_endpoint_is_named_with_documented_parameters(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(api) == {"/compare", "/stop", "/vote_a", "/vote_b", "/vote_tie", "/vote_both_bad", "/thumb_up_a",
                        "/thumb_down_a", "/thumb_up_b", "/thumb_down_b", "/pick_a", "/pick_b", "/run_a", "/run_b",
                        "/refresh", "/metrics"}
    compare = api["/compare"]
    assert [p["parameter_name"] for p in compare["parameters"]] == list(compare_args())
    names = [r["label"] for e in api.values() for r in e["returns"]] + \
        [p["parameter_name"] for e in api.values() for p in e["parameters"]]
    assert not [n for n in names if n.startswith("value_")], names


def test_binds_loopback_and_lists_only_runs(server):
    url, demo, app = server
    assert app.server_name == "127.0.0.1" and not app.share
    assert demo.pool.runs() == ["tiny", "tiny-copy", "tiny-lora"]  # "not-a-run" has no config.json


def test_both_answers_stream_side_by_side_with_speed_and_model_lines(server, client):
    _, demo, _ = server
    job = client.submit(**compare_args(ckpt_b=demo.latest, max_new=12), api_name="/compare")
    a, b, status, info_a, info_b = job.result(timeout=120)
    updates = job.outputs()
    assert a and b and status.startswith("Done") and "tokens/s" in status
    assert any(u[0] and u[1] and not u[2].startswith("Done") for u in updates), "both grow before either is done"
    assert "`tiny/base`" in info_a and "untrained" in info_a and f"`tiny/{demo.latest}`" in info_b
    assert "parameters" in info_b and "full weights" in info_b and "stage 2" in info_b
    assert "jax" in info_b or "tensorflow" in info_b


def test_each_side_answers_as_the_cli_would_with_its_checkpoint(server, client, demo_root):
    from kgpt2.generate import generate_from_run

    _, demo, _ = server
    greedy = dict(sampler="greedy", max_new=12)
    a, b, *_ = client.predict(**compare_args(ckpt_a="base", ckpt_b=demo.latest, **greedy), api_name="/compare")
    b2, a2, *_ = client.predict(**compare_args(ckpt_a=demo.latest, ckpt_b="base", **greedy), api_name="/compare")
    # The independent path: the CLI's Generator on a freshly loaded model.
    want = generate_from_run(demo_root / "tiny", PROMPT, demo.latest, sampler="greedy", max_new_tokens=12)
    assert b == b2 == want and a == a2 and a != b


def test_same_seed_and_settings_give_the_same_answer_on_both_sides(server, client):
    _, demo, _ = server
    a, b, *_ = client.predict(**compare_args(ckpt_a=demo.latest, ckpt_b=demo.latest, seed=11, max_new=12),
                              api_name="/compare")
    assert a == b and a


def test_checkpoints_are_named_as_on_the_command_line(server, client, demo_root):
    """`latest`, `stage-N` and a step, as `kgpt2 generate --checkpoint` takes them (the API said "run 'tiny' has no
    checkpoint 'latest'"); the model lines and the vote name the checkpoint's id."""
    from kgpt2.serving.votes import read_votes

    _, demo, _ = server
    stage1 = next(c for label, c in demo.pool.checkpoints("tiny") if "end of stage 1" in label)
    greedy = dict(sampler="greedy", max_new=8)
    want = client.predict(**compare_args(ckpt_a=stage1, ckpt_b=demo.latest, **greedy), api_name="/compare")
    for a_name, b_name in (("stage-1", "latest"), (stage1.removeprefix("ckpt-"), "stage-2")):
        a, b, status, info_a, info_b = client.predict(**compare_args(ckpt_a=a_name, ckpt_b=b_name, **greedy),
                                                      api_name="/compare")
        assert status.startswith("Done"), status
        assert (a, b) == (want[0], want[1]) and f"`tiny/{stage1}`" in info_a and f"`tiny/{demo.latest}`" in info_b
    assert "Recorded" in client.predict(api_name="/vote_tie")[0]
    rec = read_votes(demo_root / "tiny" / "votes.jsonl")[-1]
    assert (rec["model_a"], rec["model_b"]) == (f"tiny/{stage1}", f"tiny/{demo.latest}")
    status = client.predict(**compare_args(ckpt_b="best"), api_name="/compare")[2]
    assert "no checkpoint 'best'" in status and "latest, stage-N" in status, "a run without best.json says so"


def test_two_runs_with_different_bases_on_one_page_load_once(server, client):
    _, demo, _ = server
    pool = demo.pool
    args = compare_args(run_a="tiny", ckpt_a=demo.latest, run_b="tiny-lora", ckpt_b="base", max_new=4)
    client.predict(**args, api_name="/compare")
    client.predict(**compare_args(run_a="tiny", ckpt_a="base", run_b="tiny-lora", ckpt_b="base", max_new=4),
                   api_name="/compare")  # tiny's base loaded too: what follows counts only tiny-copy's restore
    builds, loads = pool.builds, pool.loads
    for _ in range(3):
        a, b, status, info_a, info_b = client.predict(**args, api_name="/compare")
        assert status.startswith("Done") and "LoRA" in info_b and "full weights" in info_a
    client.predict(**compare_args(run_a="tiny-copy", ckpt_a=demo.latest, run_b="tiny", ckpt_b="base"),
                   api_name="/compare")
    assert pool.builds == builds, "no model is rebuilt when switching between runs and bases already loaded"
    assert pool.loads <= loads + 1  # tiny-copy's checkpoint: restored once


def alternate_arena_sides(monkeypatch):
    """The arena's coin (the global `random`) made to alternate: six rounds of a fair coin showed one side only
    ~3% of the time, so "both sides were drawn" failed by chance (seen once, after tests/test_serve.py)."""
    from itertools import cycle
    from types import SimpleNamespace

    from kgpt2.serving import arena

    monkeypatch.setattr(arena, "random", SimpleNamespace(random=cycle([0.25, 0.75]).__next__))


def test_arena_vote_reveals_identities_and_records_everything(server, client, demo_root, monkeypatch):
    from kgpt2.align import read_pairs
    from kgpt2.serving.votes import read_votes, unpaired

    alternate_arena_sides(monkeypatch)
    _, demo, _ = server
    votes = demo_root / "tiny" / "votes.jsonl"
    before = len(read_votes(votes))
    sides = set()
    for seed in range(6):
        a, b, status, info_a, info_b = client.predict(
            **compare_args(ckpt_b=demo.latest, arena=True, seed=seed, template="instruction",
                           input_text="x = 1"), api_name="/compare")
        assert "hidden until you vote" in info_a and "hidden until you vote" in info_b
        status, info_a, info_b, summary = client.predict(api_name="/vote_b" if seed % 2 else "/vote_both_bad")
        assert "Recorded" in status and "`tiny/" in info_a and "`tiny/" in info_b
        rec = read_votes(votes)[-1]
        assert rec["model_a"] in info_a and rec["model_b"] in info_b and {rec["model_a"], rec["model_b"]} == \
            {"tiny/base", f"tiny/{demo.latest}"}
        sides.add(rec["model_a"])
        assert (rec["answer_a"], rec["answer_b"], rec["prompt"], rec["input"]) == (a, b, PROMPT, "x = 1")
        assert rec["mode"] == "arena" and rec["template"] == "instruction" and "### Input:\nx = 1" in rec["model_input"]
        assert rec["settings"]["num_beams"] == 2 and rec["settings"]["seed"] == seed and rec["time"].endswith("+00:00")
        assert f"votes: {before + seed + 1}" in summary, "the counts are current after each vote"
        status, *_ = client.predict(api_name="/vote_a")
        assert "already has its vote" in status, "a second vote on one pair is refused, saying why"
    assert sides == {"tiny/base", f"tiny/{demo.latest}"}, "the coin decides the sides"
    records = read_votes(votes)[before:]
    assert len(records) == 6
    bad = [r for r in records if r["choice"] == "both_bad"]
    assert all(r["chosen"] is None and r["labels"] == {"a": False, "b": False} for r in bad)
    pairs = read_pairs(votes.parent)
    assert len(pairs) >= 3 and not [p for p in pairs if p["chosen"] in [r["answer_a"] for r in bad]
                                    and p["rejected"] in [r["answer_b"] for r in bad]]
    kto = unpaired(records)
    assert len(kto) == 12 and sum(row["label"] for row in kto) == 3


def test_errors_stay_in_place_and_refuse_votes(client):
    long_prompt = "The assert statement " * 30  # ~600 characters, past the tiny model's 64-token context
    a, b, status, *_ = client.predict(**compare_args(prompt=long_prompt), api_name="/compare")
    assert (a, b) == ("", "") and status.startswith("**Error:**") and "64-token context" in status
    status, *_ = client.predict(api_name="/vote_a")
    assert "Vote not recorded" in status and "did not finish" in status
    status, *_ = client.predict(api_name="/vote_tie")
    assert "Vote not recorded" in status


@pytest.mark.parametrize("args,message", [
    (dict(ckpt_a="../x"), "no checkpoint '../x'"),
    (dict(ckpt_b="ckpt-999999"), "no checkpoint 'ckpt-999999'"),
    (dict(ckpt_a="/etc/passwd"), "no checkpoint"),
    (dict(run_a="../tiny"), "no run '../tiny'"),
    (dict(run_b="not-a-run"), "no run 'not-a-run'"),
    (dict(prompt="x" * 2001), "at most 2000"),
    (dict(prompt="   "), "type a prompt"),
])
def test_bad_input_gets_one_clear_message(client, args, message):
    *_, status, _, _ = client.predict(**compare_args(**args), api_name="/compare")
    assert status.startswith("**Error:**") and message in status


def test_the_models_context_caps_new_tokens_and_says_so(server, client):
    _, demo, _ = server
    assert demo.max_new_tokens() == 63  # the tiny model's 64-token context, not the 256 cap
    with pytest.raises(Exception, match="greater than maximum value 63"):  # the slider's end, checked by Gradio
        client.predict(**compare_args(max_new=64), api_name="/compare")
    prompt = PROMPT * 3
    a, b, status, *_ = client.predict(**compare_args(ckpt_a=demo.latest, ckpt_b=demo.latest, sampler="greedy",
                                                     prompt=prompt, max_new=63), api_name="/compare")
    prompt_tokens = len(demo.pool.get("tiny", "base").engine.tokenizer.encode(prompt))
    assert f"capped at {64 - prompt_tokens} new tokens" in status
    assert status.startswith("Done")


def test_changing_a_picker_clears_the_answers_and_names_the_model(server, client):
    _, demo, _ = server
    client.predict(**compare_args(), api_name="/compare")
    a, b, status, info_a, info_b = client.predict("tiny-lora", "base", api_name="/pick_a")
    assert (a, b, info_a, info_b) == ("", "", "", "") and "`tiny-lora/base`" in status and "LoRA" in status
    status, *_ = client.predict(api_name="/vote_a")
    assert "generate an answer first" in status


def test_refresh_sees_new_runs_and_drops_deleted_checkpoints(server, client, demo_root):
    _, demo, _ = server
    shutil.copytree(demo_root / "tiny", demo_root / "tiny-later", ignore=shutil.ignore_patterns("votes.jsonl"))
    try:
        first = [c for _, c in demo.pool.checkpoints("tiny-later")][1]
        shutil.rmtree(demo_root / "tiny-later" / first)  # what retention does
        run_a, ckpt_a, run_b, ckpt_b, *_ = client.predict("tiny-later", first, "tiny", "base", api_name="/refresh")
        assert "tiny-later" in [c[0] for c in run_a["choices"]]
        assert first not in [c[1] for c in ckpt_a["choices"]] and ckpt_a["value"] != first
        left, max_new = client.predict("tiny-later", api_name="/run_a")
        assert first not in [c[1] for c in left["choices"]] and max_new["maximum"] == 63
    finally:
        shutil.rmtree(demo_root / "tiny-later")


def test_refresh_through_the_api_reloads_the_metrics_as_the_button_does(server, client, demo_root):
    """/refresh returned the pickers and the summary only: the page's button chained a private metrics event
    after it, so an API client never saw a new evaluation's table, nor the plots."""
    import pandas as pd

    shutil.copytree(demo_root / "tiny", demo_root / "tiny-evaluated", ignore=shutil.ignore_patterns("votes.jsonl"))
    try:
        table = demo_root / "tiny-evaluated" / "evaluation-test.csv"
        rows = pd.read_csv(table)
        rows.loc[len(rows)] = rows.iloc[0].copy()
        rows.loc[len(rows) - 1, "model"] = "added-after-start"
        rows.to_csv(table, index=False)
        out = client.predict("tiny-evaluated", "base", "tiny", "base", api_name="/refresh")
        assert len(out) == 14, "pickers, summary, the two tables and the two plots, the answers' five"
        _, _, _, _, summary, stages, evaluation, loss_png, eval_png = out[:9]
        assert summary.startswith("**tiny-evaluated**") and "2 stages finished" in summary
        assert len(stages["data"]) == 2 and "added-after-start" in [row[0] for row in evaluation["data"]]
        assert loss_png is not None and eval_png is not None
    finally:
        shutil.rmtree(demo_root / "tiny-evaluated")


def test_stop_ends_the_answers_and_the_pair_takes_no_vote(server, client, monkeypatch):
    _, demo, _ = server
    monkeypatch.setattr(demo.answerer, "min_step_s", 0.05)  # slow enough to press Stop mid-answer
    job = client.submit(**compare_args(max_new=60, sampler="random"), api_name="/compare")
    while len(job.outputs()) < 3:
        pass
    client.predict(api_name="/stop")
    a, b, status, *_ = job.result(timeout=60)
    assert status.startswith("Stopped") and len(demo.pool.get("tiny", "base").engine.tokenizer.encode(a)) < 50
    status, *_ = client.predict(api_name="/vote_a")
    assert "Vote not recorded" in status and "stopped" in status


def test_metrics_panel(client):
    summary, stages, evaluation, loss_png, eval_png = client.predict("tiny", api_name="/metrics")
    assert "2 stages finished" in summary and "evaluation: test" in summary
    assert stages["headers"][:2] == ["stage", "step"] and len(stages["data"]) == 2
    assert [row[0] for row in evaluation["data"]][0] == "base" and "perplexity" in evaluation["headers"]
    assert loss_png is not None and eval_png is not None
    with pytest.raises(Exception, match="no run"):
        client.predict("../tiny", api_name="/metrics")


def test_whitespace_only_and_empty_answers_are_visible():
    from kgpt2.demo import shown

    assert shown("\n\n") == "[an answer of whitespace only: '\\n\\n']"
    assert "empty answer" in shown("") and shown(" ok\n") == " ok\n"


def test_examples_come_from_the_runs_held_out_data(server):
    _, demo, _ = server
    examples = demo.examples().texts
    assert 1 <= len(examples) <= 4 and all(e.strip() for e in examples)


def test_example_chips_leave_out_restructuredtext_heading_marks():
    """The pydoc topics' headings made chips like "Attribute references ******************** An attribute refer…"."""
    from kgpt2.serving.demo_examples import example_from_text

    text = "Attribute references\n********************\n\nAn attribute reference is a primary followed by a period."
    assert example_from_text(text) == "Attribute references An attribute reference is"
    assert example_from_text("=====\nTitle\n=====\nx = 1 ** 2 -- y", words=6) == "Title x = 1 ** 2"
    assert example_from_text("---\nA -> B\n...\n", words=6) == "A -> B", "overlines, underlines, rules alike"


def test_the_pages_button_updates_work_from_any_folder(server, tmp_path, monkeypatch):
    """`kgpt2 demo` run from a project folder: every update of the thumb buttons (Generate's busy / idle, the
    vote buttons after a vote) failed with Gradio's InvalidPathError for their icons outside the working
    directory, so Generate never answered; in the repository (where these tests run) it worked."""
    import asyncio

    from gradio.state_holder import SessionState

    _, _, app = server
    monkeypatch.chdir(tmp_path)
    fns = {f.api_name: f for f in app.fns.values()}
    state = SessionState(app)
    busy = asyncio.run(app.process_api(block_fn=fns["busy"], inputs=[], state=state))["data"]
    assert [u["interactive"] for u in busy] == [False] * 9 + [True]  # Generate, 8 votes, Stop
    idle = asyncio.run(app.process_api(block_fn=fns["idle"], inputs=[None], state=state))["data"]
    assert [u["interactive"] for u in idle] == [True] + [False] * 9, "no answers: nothing to vote on"


def test_the_start_line_names_the_address_and_kgpt2s_share_flag(server, capfd):
    from kgpt2.demo import serve

    _, demo, _ = server
    capfd.readouterr()
    app = serve(demo, port=free_port(), prevent_thread_lock=True)
    try:
        out = capfd.readouterr().out
    finally:
        app.close()
    assert f"demo on {app.local_url} (kgpt2 demo --share: a public link as well)" in out
    assert "share=True" not in out and "Running on local URL" not in out


def test_a_busy_port_is_refused_in_one_sentence_before_any_model_is_built(demo_root, kgpt2_cli):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = kgpt2_cli("demo", "--checkpoints-root", demo_root, "--run", "tiny", "--port", port, cwd=REPO)
    assert p.returncode == 2, p.stderr
    assert f"port {port}" in p.stderr and "in use" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "built the base model" not in p.stderr


def test_run_is_a_name_under_the_root_or_a_run_folder_here(tmp_path, tiny_run, tiny_preset, monkeypatch):
    """`kgpt2 demo --run mine` from the folder that holds `mine` opens it (it was "there is no run 'mine' under
    'checkpoints'"); a name under the root still wins; a preset folder beside the runs is no run."""
    from kgpt2 import demo

    monkeypatch.setattr(demo, "serve", lambda d, *a, **k: (d.pool.root, d.run))
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_run, "mine")
    shutil.copytree(tiny_preset, "preset")
    assert demo.launch(run="mine", port=free_port()) == (Path("."), "mine")
    shutil.copytree(tiny_run, "checkpoints/mine")
    assert demo.launch(run="mine", port=free_port()) == (Path("checkpoints"), "mine")
    pool = demo.Demo(".", "mine").pool
    assert pool.runs() == ["mine"]
    with pytest.raises(UserError, match="there is no run 'preset' under the checkpoints root"):
        pool.run_dir("preset")


def test_entry_point_without_the_quickstart_run_says_what_to_do(tmp_path):
    env = dict(os.environ, KGPT2_CHECKPOINTS_ROOT=str(tmp_path), GRADIO_SERVER_PORT=str(free_port()))
    p = subprocess.run([sys.executable, str(REPO / "gradio_app.py")], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "kgpt2 quickstart" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    with pytest.raises(UserError, match="kgpt2 quickstart"):
        from kgpt2.demo import Demo

        Demo(tmp_path, None)


def test_runs_of_different_tokenizers_each_prompt_with_their_own(tmp_path, tiny_run, tiny_overrides):
    """Side A: tiny_run (a 512-token BPE); side B: a run of a character tokenizer and a 32-token context. Each side
    gets the prompt's ids from its own tokenizer, the answers are capped by the side with less room (the character
    run's), and each answer is the one `kgpt2 generate` gives on that run."""
    from kgpt2.config import load_config, save_config
    from kgpt2.data.sources import open_source
    from kgpt2.demo import Demo
    from kgpt2.generate import generate_from_run
    from kgpt2.model.char_tokenizer import CharTokenizer
    from kgpt2.model.models import load_tokenizer
    from kgpt2.model.scratch import init_preset
    from kgpt2.run import load_run_config
    from kgpt2.serving.arena import Match

    shutil.copytree(tiny_run, tmp_path / "bpe")
    chars = CharTokenizer.train(d.text for d in open_source("pydoc")).save(tmp_path / "char-tokenizer")
    cfg = load_config(None, tiny_overrides + ["model.preset=scratch", f"model.tokenizer={chars}", "model.vocabulary_size=0",
                                              "model.max_sequence_length=32", "data.sequence_length=16",
                                              f"checkpoints_root={tmp_path}", "run=chars"])
    preset = init_preset(cfg, tmp_path / "chars" / "preset")
    save_config(load_config(None, tiny_overrides + [f"model.preset={preset}", f"model.tokenizer={chars}",
                                                    "model.max_sequence_length=32", "data.sequence_length=16",
                                                    f"checkpoints_root={tmp_path}", "run=chars"]),
                tmp_path / "chars" / "config.json")
    bpe_tok, char_tok = (load_tokenizer(load_run_config(tmp_path / r).model) for r in ("bpe", "chars"))
    assert bpe_tok.kind != "char" and char_tok.kind == "char"
    want = {"a": bpe_tok.encode(PROMPT), "b": char_tok.encode(PROMPT)}
    assert len(want["b"]) == len(PROMPT) > len(want["a"])  # the two tokenizers split it differently

    demo = Demo(tmp_path, "bpe", max_batch=2)
    match = Match.draw(("bpe", demo.latest), ("chars", "base"), arena=False)
    settings = demo.settings("greedy", 0.8, 50, 0.95, 1, 30, 0, "plain")
    jobs, note = demo._plan(match, PROMPT, "", settings)
    assert [job.ids for job in jobs] == [want["a"], want["b"]]
    room = 32 - len(PROMPT)  # the character run's: 12 new tokens, on both sides
    assert [job.total - len(job.ids) for job in jobs] == [room, room]
    assert f"capped at {room} new tokens: the prompt takes {len(PROMPT)} of the model's 32-token context" in note

    a, b, status, *_ = list(demo.compare("bpe", demo.latest, "chars", "base", False, PROMPT, "", "plain", "greedy",
                                         0.8, 50, 0.95, 1, 30, 0))[-1]
    assert status.startswith("Done"), status
    assert a == generate_from_run(tmp_path / "bpe", PROMPT, demo.latest, sampler="greedy", max_new_tokens=room)
    assert b == generate_from_run(tmp_path / "chars", PROMPT, "base", sampler="greedy", max_new_tokens=room)


def test_gradio_cache_of_another_user_is_not_used(tmp_path, monkeypatch):
    """A second user on a shared machine: <tmp>/gradio is the first user's, and every plot and table of the demo
    showed "Error" (PermissionError in Gradio's postprocess, seen as user nobody after root had run a demo)."""
    import kgpt2.demo as demo

    theirs = tmp_path / "gradio"
    theirs.mkdir()
    monkeypatch.setattr(demo.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setenv("GRADIO_TEMP_DIR", "recorded")  # so monkeypatch puts back what was there before the test
    monkeypatch.delenv("GRADIO_TEMP_DIR")
    demo.gradio_cache_of_this_user()
    assert "GRADIO_TEMP_DIR" not in os.environ, "a writable default stays Gradio's"
    real_access = os.access
    monkeypatch.setattr(demo.os, "access", lambda p, mode: False if Path(p) == theirs else real_access(p, mode))
    demo.gradio_cache_of_this_user()
    ours = Path(os.environ["GRADIO_TEMP_DIR"])
    assert ours.parent == tmp_path and ours.name == f"gradio-{os.getuid()}"
    monkeypatch.setenv("GRADIO_TEMP_DIR", "/somewhere/mine")
    demo.gradio_cache_of_this_user()
    assert os.environ["GRADIO_TEMP_DIR"] == "/somewhere/mine", "the user's own setting wins"


def test_the_demo_opens_on_a_training_run_whose_newest_checkpoint_goes_while_it_starts(tmp_path, tiny_run):
    """`kgpt2 demo --run R` beside `kgpt2 train` of R with frequent checkpoints: the newest checkpoint listed at
    start was removed by the trainer's retention while the base model was built, and the demo exited with "run R
    has no checkpoint 'ckpt-46600'"."""
    from kgpt2.demo import Demo

    shutil.copytree(tiny_run, tmp_path / "root" / "tiny")
    demo = Demo(tmp_path / "root", "tiny", batching=False)
    gone = demo.latest
    shutil.rmtree(tmp_path / "root" / "tiny" / gone)  # the trainer's retention, during start-up
    demo.warm_up()
    assert demo.latest != gone and demo.latest in {ckpt for _, ckpt in demo.pool.checkpoints("tiny")}


def test_one_broken_run_under_the_root_does_not_stop_the_page(tmp_path, tiny_run):
    """`kgpt2 demo --checkpoints-root R` with a run whose config.json is empty beside a good one exited 2 ("run
    config ... cannot be read"); picking the broken run in the page showed Gradio's bare "Error"."""
    import gradio as gr

    from kgpt2.demo import Demo

    (tmp_path / "root" / "broken").mkdir(parents=True)
    (tmp_path / "root" / "broken" / "config.json").write_text("")
    shutil.copytree(tiny_run, tmp_path / "root" / "good")
    demo = Demo(tmp_path / "root", batching=False)
    assert demo.run == "good" and demo.pool.runs() == ["broken", "good"]
    with pytest.raises(gr.Error, match="broken"):
        demo.run_changed("broken")
