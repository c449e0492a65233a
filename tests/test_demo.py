"""The Gradio demo, end to end: served on a loopback port, driven by gradio_client and Chromium.

The app is launched in this process on a copy of the `tiny_run` fixture (so
votes never land in the shared run), which also lets the tests read its
model store's counters: checkpoint switches must swap weights, not rebuild.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kgpt2.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
PROMPT = "The assert statement"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(run="tiny", left="base", right="base", prompt=PROMPT, sampler="top_p", max_new=8, seed=3,
          template="plain", **kw):
    return [run, left, right, prompt, sampler, kw.get("temperature", 0.8), kw.get("top_k", 50),
            kw.get("top_p", 0.95), max_new, seed, template]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory, tiny_run) -> Path:
    root = tmp_path_factory.mktemp("demo-root")
    shutil.copytree(tiny_run, root / "tiny")
    from kgpt2.evaluate import evaluate_run

    evaluate_run(root / "tiny", checkpoints="all", split="test", compare_base=True, max_batches=2)
    shutil.copytree(tiny_run, root / "tiny-copy")  # same preset: picking it must not rebuild
    (root / "not-a-run").mkdir()
    return root


@pytest.fixture(scope="module")
def server(demo_root):
    from kgpt2.demo import Demo, serve

    demo = Demo(demo_root, "tiny")
    app = serve(demo, port=_free_port(), prevent_thread_lock=True, quiet=True)
    yield app.local_url, demo, app
    app.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    c = Client(server[0], verbose=False, download_files=False)
    yield c
    c.close()


def test_binds_loopback_and_lists_only_runs(server):
    url, demo, app = server
    assert app.server_name == "127.0.0.1" and not app.share
    assert demo.store.runs() == ["tiny", "tiny-copy"]  # "not-a-run" has no config.json
    ids = [v for _, v in demo.store.checkpoints("tiny")]
    assert ids[0] == "base" and ids[-1] == demo.latest and len(ids) >= 3


def test_compare_streams_two_answers(server, client):
    _, demo, _ = server
    job = client.submit(*_args(right=demo.latest, max_new=10), api_name="/compare")
    left, right, status = job.result(timeout=120)
    updates = job.outputs()
    assert left and right and status.startswith("Done")
    assert len(updates) >= 6  # token by token, not one final message
    lefts = [u[0] for u in updates]
    assert all(b.startswith(a) for a, b in zip(lefts, lefts[1:])), "each update extends the last"
    assert any(u[0] and not u[1] for u in updates), "the left answer streams before the right starts"


def test_same_seed_and_settings_give_the_same_answer_on_both_sides(server, client):
    _, demo, _ = server
    ckpt = demo.latest
    left, right, _ = client.predict(*_args(left=ckpt, right=ckpt, seed=11, max_new=12), api_name="/compare")
    assert left == right and left


def test_each_side_answers_with_its_own_checkpoint(server, client):
    _, demo, _ = server
    greedy = dict(sampler="greedy", max_new=12)
    base_left, latest_right, _ = client.predict(*_args(left="base", right=demo.latest, **greedy), api_name="/compare")
    latest_left, base_right, _ = client.predict(*_args(left=demo.latest, right="base", **greedy), api_name="/compare")
    # Stale or half-restored weights would make an answer depend on what ran before it.
    assert (latest_left, base_right) == (latest_right, base_left)
    assert base_left != latest_right


def test_switching_checkpoints_and_runs_swaps_weights_without_rebuilding(server, client):
    _, demo, _ = server
    store = demo.store
    builds, swaps = store.builds, store.swaps
    stage1 = [v for _, v in store.checkpoints("tiny") if v not in ("base", demo.latest)][0]
    client.predict(*_args(left=stage1, right=demo.latest, max_new=3), api_name="/compare")
    client.predict(*_args(run="tiny-copy", left="base", right=demo.latest, max_new=3), api_name="/compare")
    assert store.builds == builds, "same preset: the loaded model is reused"
    assert store.swaps >= swaps + 3
    left, right, *metrics = client.predict("tiny-copy", api_name="/select_run")
    assert left["value"] == "base" and right["value"] == demo.latest


def test_a_different_base_rebuilds_the_model(demo_root, tmp_path):
    from kgpt2.demo import ModelStore

    shutil.copytree(demo_root / "tiny", tmp_path / "a", ignore=shutil.ignore_patterns("ckpt-*"))
    shutil.copytree(demo_root / "tiny", tmp_path / "b", ignore=shutil.ignore_patterns("ckpt-*"))
    cfg_b = json.loads((tmp_path / "b" / "config.json").read_text())
    cfg_b["lora"]["enabled"] = True  # another base: LoRA layers on the same preset
    (tmp_path / "b" / "config.json").write_text(json.dumps(cfg_b))
    store = ModelStore(tmp_path)
    with store.lock:
        store.use(*store.resolve("a", "base"))
        store.use(*store.resolve("a", "base"))
        assert store.builds == 1
        store.use(*store.resolve("b", "base"))
    assert store.builds == 2


def test_vote_writes_a_dpo_record_and_takes_one_vote_per_generation(server, demo_root):
    from gradio_client import Client

    from kgpt2.align import PairStats, read_pairs
    from kgpt2.votes import read_votes

    _, demo, _ = server
    votes = demo_root / "tiny" / "votes.jsonl"
    before = len(read_votes(votes))
    c = Client(server[0], verbose=False, download_files=False)  # its own session (gr.State)
    try:
        with pytest.raises(Exception, match="generate two answers first"):
            c.predict(api_name="/vote_right")
        left, right, _ = c.predict(*_args(right=demo.latest, seed=5, template="instruction"), api_name="/compare")
        assert "Recorded right is better" in c.predict(api_name="/vote_right")
        with pytest.raises(Exception, match="generate two answers first"):
            c.predict(api_name="/vote_left")
        c.predict(*_args(right=demo.latest, seed=6), api_name="/compare")
        c.predict(api_name="/vote_tie")
    finally:
        c.close()
    records = read_votes(votes)[before:]
    assert len(records) == 2
    rec, tie = records
    assert (rec["prompt"], rec["chosen"], rec["rejected"], rec["choice"]) == (PROMPT, right, left, "right")
    assert rec["instruction"] == PROMPT and rec["model_input"].startswith("### Instruction:\n" + PROMPT)
    assert (rec["left_model"], rec["right_model"]) == ("tiny/base", f"tiny/{demo.latest}")
    assert (rec["left_answer"], rec["right_answer"]) == (left, right)
    assert rec["settings"]["seed"] == 5 and rec["settings"]["sampler"] == "top_p" and rec["time"]
    assert (tie["choice"], tie["chosen"], tie["rejected"]) == ("tie", None, None)
    for line in votes.read_text().splitlines():
        json.loads(line)  # every line is valid JSON
    # What `kgpt2 align` reads from the run: the tie skipped and counted, the
    # instruction vote as the prompt the model saw.
    stats = PairStats()
    pairs = read_pairs(votes.parent, stats=stats)
    assert stats.ties >= 1 and len(pairs) == stats.read - stats.ties - stats.identical
    assert {"prompt": rec["model_input"], "chosen": right.strip(), "rejected": left.strip()} in pairs


@pytest.mark.parametrize("run,ckpt,message", [
    ("tiny", "../x", "no checkpoint '../x'"),
    ("tiny", "ckpt-999999", "no checkpoint 'ckpt-999999'"),
    ("tiny", "/etc/passwd", "no checkpoint"),
    ("../tiny", "base", "no run '../tiny'"),
    ("not-a-run", "base", "no run 'not-a-run'"),
    ("/tmp", "base", "no run '/tmp'"),
])
def test_names_from_the_client_are_checked_against_the_listing(client, run, ckpt, message):
    with pytest.raises(Exception, match=message):
        client.predict(*_args(run=run, left=ckpt, right="base", max_new=2), api_name="/compare")


def test_metrics_panel_and_traversal_in_metrics(client, demo_root):
    summary, stages, evaluation, loss_png, eval_png = client.predict("tiny", api_name="/metrics")
    assert "2 stage(s) finished" in summary
    assert stages["headers"][:2] == ["loss", "accuracy"] and len(stages["data"]) == 2
    assert [row[0] for row in evaluation["data"]][0] == "base" and "perplexity" in evaluation["headers"]
    assert loss_png is not None and eval_png is not None
    assert "evaluation: test" in summary
    with pytest.raises(Exception, match="no run"):
        client.predict("../tiny", api_name="/metrics")


def test_over_long_input_gets_a_clear_message(client):
    from kgpt2.demo import MAX_NEW_TOKENS, MAX_PROMPT_CHARS

    with pytest.raises(Exception, match=f"at most {MAX_PROMPT_CHARS}"):
        client.predict(*_args(prompt="x" * (MAX_PROMPT_CHARS + 1)), api_name="/compare")
    with pytest.raises(Exception, match="must be shorter than"):  # the tiny model holds 64 tokens
        client.predict(*_args(prompt="The assert statement " * 40), api_name="/compare")
    with pytest.raises(Exception, match=f"{MAX_NEW_TOKENS}"):
        client.predict(*_args(max_new=MAX_NEW_TOKENS + 1), api_name="/compare")
    with pytest.raises(Exception, match="type a prompt"):
        client.predict(*_args(prompt="   "), api_name="/compare")


def _rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="RSS is read from /proc (Linux)")
def test_twenty_concurrent_clients_all_get_answers_memory_flat(server):
    from gradio_client import Client

    url, demo, _ = server
    clients = [Client(url, verbose=False, download_files=False) for _ in range(20)]

    def ask(i):
        return clients[i].predict(*_args(right=demo.latest, seed=i, max_new=3), api_name="/compare")

    try:
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(ask, range(20)))  # also the warm-up: sessions, thread pools
            before = _rss_mb()
            results += list(pool.map(ask, range(20)))
            after = _rss_mb()
    finally:
        for c in clients:
            c.close()
    assert len(results) == 40 and all(left and right and status.startswith("Done") for left, right, status in results)
    assert after - before < 150, f"RSS grew {after - before:.0f} MB over 20 answers ({before:.0f} -> {after:.0f} MB)"


def test_entry_point_without_the_quickstart_run_says_what_to_do(tmp_path):
    env = dict(os.environ, KGPT2_CHECKPOINTS_ROOT=str(tmp_path))
    p = subprocess.run([sys.executable, str(REPO / "gradio_app.py")], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "kgpt2 quickstart" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    with pytest.raises(UserError, match="kgpt2 quickstart"):
        from kgpt2.demo import Demo

        Demo(tmp_path, None)


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_browser_loads_types_generates_and_sees_two_answers(server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    url, demo, _ = server
    args = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)  # not "networkidle": Gradio keeps a heartbeat stream open
            page.locator("#prompt textarea").fill(PROMPT, timeout=60_000)
            page.locator("#generate").click()
            page.wait_for_function("document.querySelector('#status').innerText.includes('Done')", timeout=60_000)
            left = page.locator("#left-answer textarea").input_value()
            right = page.locator("#right-answer textarea").input_value()
            assert left.strip() and right.strip()
            if os.environ.get("KGPT2_UPDATE_SCREENSHOT") == "1":
                page.screenshot(path=str(REPO / "docs" / "demo.png"), full_page=True)
        finally:
            browser.close()
