"""/refresh through gradio_client on a launched demo does what the page's button does: a pick the refresh moves (the
right picker on the latest, and training saved a newer checkpoint) clears the shown answers and their vote. The
button chained that clearing as a second, private event, which an API client never triggers: its answers stayed
and a vote then recorded them against the new checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_demo import compare_args, free_port

pytestmark = pytest.mark.backend_neutral  # the page's handlers; decoding is tested elsewhere


@pytest.fixture
def served(tmp_path, tiny_run):
    """(a gradio_client Client on a launched demo of a copy of `tiny_run`, the run's folder)."""
    from gradio_client import Client

    from kgpt2.demo import Demo, serve

    run = tmp_path / "root" / "tiny"
    shutil.copytree(tiny_run, run)
    app = serve(Demo(run.parent, "tiny", max_batch=2), port=free_port(), prevent_thread_lock=True, quiet=True)
    client = Client(app.local_url, verbose=False, download_files=False)  # one session: its own gr.State
    yield client, run
    client.close()
    app.close()


def _ids(run: Path) -> list[str]:
    return sorted((p.name for p in run.glob("ckpt-*")), key=lambda name: int(name[5:]))


def _saved(run: Path) -> str:
    """Training saves a newer checkpoint (a copy of the newest, 40 steps on)."""
    newest = _ids(run)[-1]
    name = f"ckpt-{int(newest[5:]) + 40}"
    shutil.copytree(run / newest, run / name)
    return name


def _votes(run: Path) -> list[dict]:
    path = run / "votes.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_a_moved_pick_clears_the_answers_and_their_vote_through_the_api(served):
    client, run = served
    latest = _ids(run)[-1]
    a, b, status, *_ = client.predict(**compare_args(ckpt_b=latest, max_new=4), api_name="/compare")
    assert status.startswith("Done") and b
    new = _saved(run)
    out = client.predict("tiny", "base", "tiny", latest, api_name="/refresh")
    assert len(out) == 14, "pickers, the metrics panel, then the answers, the status and the model lines"
    _, ckpt_a, _, ckpt_b, *metrics, a, b, status, info_a, info_b = out
    assert (ckpt_a["value"], ckpt_b["value"]) == ("base", new), "the base stays; the latest follows"
    assert metrics[0].startswith("**tiny**")
    assert (a, b, info_a, info_b) == ("", "", "", ""), "the old answers went, as on the page"
    assert status.startswith(f"Right model is now `tiny/{new}`, the newest · ")
    status, *_ = client.predict(api_name="/vote_b")
    assert "generate an answer first" in status, "the answers' vote went with them"
    assert _votes(run) == []


def test_a_refresh_that_moves_nothing_keeps_the_answers_and_their_vote(served):
    client, run = served
    older = _ids(run)[0]
    client.predict("tiny", older, api_name="/pick_b")
    *_, status, _, _ = client.predict(**compare_args(ckpt_b=older, max_new=4), api_name="/compare")
    assert status.startswith("Done")
    _saved(run)
    *_, a, b, status, info_a, info_b = client.predict("tiny", "base", "tiny", older, api_name="/refresh")
    assert (a, b, status, info_a, info_b) == ({"__type__": "update"},) * 5, "unchanged (gr.skip)"
    status, *_ = client.predict(api_name="/vote_b")
    assert status.startswith("Recorded B is better") and [v["chosen"] for v in _votes(run)]
