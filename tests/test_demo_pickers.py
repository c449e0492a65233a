"""The model pickers and the votes through the demo's API: a picker sent back unchanged keeps the answers.

Gradio sends a dropdown's value as an input when the dropdown is opened and closed without a choice: the page
cleared both answers and switched their votes off (a run picker also reset its model to the latest). The vote's
status line said "Recorded b is better".
"""

from __future__ import annotations

import shutil

import pytest
from test_demo import compare_args, free_port

pytestmark = pytest.mark.backend_neutral  # the page's handlers; decoding is tested elsewhere


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_run):
    from kgpt2.demo import Demo, serve

    root = tmp_path_factory.mktemp("pickers-root")
    shutil.copytree(tiny_run, root / "tiny")
    demo = Demo(root, "tiny", max_batch=2)
    app = serve(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    yield app.local_url, demo
    app.close()


@pytest.fixture
def client(served):
    from gradio_client import Client

    c = Client(served[0], verbose=False, download_files=False)
    yield c
    c.close()


def test_an_unchanged_pick_keeps_the_answers_and_their_vote(served, client):
    _, demo = served
    *_, status, _, _ = client.predict(**compare_args(ckpt_b=demo.latest), api_name="/compare")
    assert status.startswith("Done"), status
    client.predict(run="tiny", checkpoint=demo.latest, api_name="/pick_b")  # opened and closed
    client.predict(run="tiny", checkpoint="base", api_name="/pick_a")
    client.predict(run="tiny", api_name="/run_b")
    assert client.predict(api_name="/vote_b")[0].startswith("Recorded B is better in `tiny/votes.jsonl`")


def test_a_changed_pick_clears_the_answers_and_refuses_their_vote(served, client):
    _, demo = served
    client.predict(**compare_args(ckpt_b=demo.latest), api_name="/compare")
    a, b, status, *_ = client.predict(run="tiny", checkpoint="base", api_name="/pick_b")
    assert (a, b) == ("", "") and "Right model: `tiny/base`" in status
    assert client.predict(api_name="/vote_tie")[0].startswith("**Vote not recorded:**")


def test_the_vote_lines_name_the_choice_as_its_button_does(served, client):
    client.predict(**compare_args(), api_name="/compare")
    assert client.predict(api_name="/vote_tie")[0].startswith("Recorded tie in")
    client.predict(**compare_args(), api_name="/compare")
    assert client.predict(api_name="/vote_a")[0].startswith("Recorded A is better in")


def test_the_run_folder_moved_away_while_the_demo_runs(tmp_path, tiny_run):
    """The page's refresh then left every picker empty, the metrics tables with headers "1 2 3" and no word why;
    Generate said "there is no run 'None'" under "Model A: None/None"."""
    from kgpt2.demo import Demo

    shutil.copytree(tiny_run, tmp_path / "root" / "tiny")
    demo = Demo(tmp_path / "root", "tiny", batching=False)
    (tmp_path / "root" / "tiny").rename(tmp_path / "elsewhere")
    run_a, ckpt_a, run_b, ckpt_b, summary, stages, evaluation, *_ = demo.refresh("tiny", "base", "tiny", demo.latest)
    assert (run_a.value, ckpt_a.value, run_b.value, ckpt_b.value) == (None, None, None, None)
    assert "No runs" in summary and "moved or removed" in summary
    assert list(stages.columns)[:2] == ["stage", "step"] and len(stages) == 0 and len(evaluation) == 0
    *_, (a, b, status, info_a, info_b, match) = demo.compare(**compare_args(run_a=None, ckpt_a=None, run_b=None,
                                                                             ckpt_b=None))
    assert status.startswith("**Error:** no run is picked: the checkpoints root has no runs now"), status
    assert (info_a, info_b) == ("", "")
