"""The demo's refresh while its run is still training: the training plot runs to the newest logged step (it showed
loss.png, drawn when a stage ended), a picker that showed the latest checkpoint follows the new latest (it stayed on
the old one, its "· latest" gone), and the panel's labels ("2 stages finished", the preset named as a person knows
it). The run goes on "training" by hand: a newer checkpoint appears (a copy of the newest, under a later step) and
steps are appended to its step log."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_demo import compare_args, free_port

pytestmark = pytest.mark.backend_neutral  # the page's handlers and plots; decoding is tested elsewhere


def _ids(run: Path) -> list[str]:
    return sorted((p.name for p in run.glob("ckpt-*")), key=lambda name: int(name[5:]))


@pytest.fixture
def training(tmp_path, tiny_run) -> Path:
    """The root of a copy of `tiny_run`, whose training goes on by hand (`_saved`, `_log_steps`)."""
    shutil.copytree(tiny_run, tmp_path / "root" / "tiny")
    return tmp_path / "root"


def _saved(root: Path, steps: int = 40) -> str:
    """Training saves its next checkpoint, `steps` after the newest (a copy of it: intact, a step of its own)."""
    newest = _ids(root / "tiny")[-1]
    name = f"ckpt-{int(newest[5:]) + steps}"
    shutil.copytree(root / "tiny" / newest, root / "tiny" / name)
    return name


def _log_steps(run: Path, n: int) -> int:
    """Append `n` steps to the run's step log, as a run training on past its loss.png does; the newest step."""
    from kgpt2.training.run_logs import STEP_FIELDS

    path = run / "logs" / "steps.csv"
    with open(path, newline="") as f:
        last = list(csv.DictReader(f))[-1]
    step = int(last["step"])
    with open(path, "a", newline="") as f:
        for i in range(1, n + 1):
            row = {**last, "step": step + i, "since_step": step, "loss": float(last["loss"]) - 0.5 - 0.01 * i}
            csv.DictWriter(f, STEP_FIELDS).writerow(row)
    return step + n


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_the_training_plot_runs_to_the_newest_logged_step(tmp_path, tiny_run):
    """loss.png is written when a stage ends: mid-stage the plot stopped at that step, with nothing saying so."""
    from PIL import Image

    from kgpt2.demo import Demo
    from kgpt2.training.run_plot import plot_run

    run = tmp_path / "root" / "tiny"
    shutil.copytree(tiny_run, run)
    demo = Demo(run.parent, "tiny", batching=False)
    stale = Image.open(run / "loss.png")
    _log_steps(run, 40)
    files = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    plot = demo.refresh("tiny", "base", "tiny", demo.latest)[7]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == files, "nothing written in the run"

    drawn = tmp_path / "as-train-draws-it" / "tiny"  # the plot `kgpt2 train` would draw from these logs
    shutil.copytree(run, drawn)
    plot_run(drawn)
    assert np.array_equal(_pixels(plot), _pixels(Image.open(drawn / "loss.png")))
    assert not np.array_equal(_pixels(plot), _pixels(stale)), "the stale loss.png"

    _log_steps(run, 20)  # and on: the next refresh draws again
    again = demo.metrics("tiny")[3]
    assert not np.array_equal(_pixels(again), _pixels(plot))


def test_a_pick_of_the_latest_follows_the_new_latest_and_clears_its_answers(training):
    from kgpt2.demo import Demo

    root = training
    demo = Demo(root, "tiny", batching=False)
    old = demo.latest
    listed = {"a": ("tiny", old), "b": ("tiny", old), "moved": {}}  # the page as it opened
    *_, (_, answer, status, *_) = demo.compare(**compare_args(ckpt_b=old, max_new=4))
    assert status.startswith("Done") and answer
    new = _saved(root)
    run_a, ckpt_a, run_b, ckpt_b, *_, listed, a, b, status, info_a, info_b, match = demo.refresh(
        "tiny", "base", "tiny", old, listed)
    assert (ckpt_a.value, ckpt_b.value) == ("base", new), "the base stays; the latest follows"
    assert dict((v, k) for k, v in ckpt_b.choices)[new].endswith("· latest")
    assert (a, b, info_a, info_b, match) == ("", "", "", "", None), "the old answers and their vote go"
    assert status.startswith(f"Right model is now `tiny/{new}`, the newest · ") and "Generate to compare" in status


def test_an_older_pick_stays_with_its_answers(training):
    import gradio as gr

    from kgpt2.demo import Demo

    root = training
    demo = Demo(root, "tiny", batching=False)
    older = _ids(root / "tiny")[0]
    assert older != demo.latest
    listed = {"a": ("tiny", demo.latest), "b": ("tiny", demo.latest), "moved": {}}
    _saved(root)
    out = demo.refresh("tiny", "base", "tiny", older, listed)
    assert out[3].value == older, "picked on purpose: kept"
    assert out[10:] == (gr.skip(),) * 6, "nothing moved: the answers stay"


def test_the_page_state_follows_through_the_api(training):
    """/refresh and /run_b keep the session's listing (gr.State): a client on the latest follows it, one that
    picked an older checkpoint keeps it."""
    from gradio_client import Client

    from kgpt2.demo import Demo, serve

    root = training
    demo = Demo(root, "tiny", max_batch=2)
    old, older = demo.latest, _ids(root / "tiny")[0]
    app = serve(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    clients = [Client(app.local_url, verbose=False, download_files=False) for _ in range(2)]
    try:
        new = _saved(root)
        _, _, _, ckpt_b, *rest = clients[0].predict("tiny", "base", "tiny", old, api_name="/refresh")
        assert ckpt_b["value"] == new and len(rest) == 10, "the metrics, the answers, the status, the model lines"
        clients[1].predict("tiny", older, api_name="/pick_b")
        assert clients[1].predict("tiny", "base", "tiny", older, api_name="/refresh")[3]["value"] == older
    finally:
        for c in clients:
            c.close()
        app.close()


def test_the_summary_counts_stages_in_words(tmp_path):
    from kgpt2.serving.run_metrics import summary

    (tmp_path / "stages.csv").write_text("stage,loss,accuracy\n1,3.5,0.3\n")
    assert "**r**: 1 stage finished · " in summary(tmp_path, "r")
    (tmp_path / "stages.csv").write_text("stage,loss,accuracy\n1,3.5,0.3\n2,3.0,0.35\n")
    assert "**r**: 2 stages finished · " in summary(tmp_path, "r")


def test_the_model_line_names_the_runs_copy_of_its_preset(tmp_path, tiny_run):
    """It said just "preset" (the copy's folder name)."""
    from kgpt2.demo import Demo
    from kgpt2.model.scratch import SCRATCH_MARK

    shutil.copytree(tiny_run, tmp_path / "root" / "tiny")
    assert (tmp_path / "root" / "tiny" / "preset" / "config.json").is_file(), "the run holds its preset's copy"
    demo = Demo(tmp_path / "root", "tiny", batching=False)
    assert "`tiny/base` · tiny/preset · " in demo.picker_changed("tiny", "base", "b")[2]
    (tmp_path / "root" / "tiny" / "preset" / SCRATCH_MARK).write_text("{}")  # made by `kgpt2 pretrain init`
    from kgpt2.serving.checkpoint_names import preset_name

    assert preset_name(str(tmp_path / "root" / "tiny" / "preset"), tmp_path / "root" / "tiny") == \
        "tiny/preset (from scratch)"


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is not installed")
def test_the_refresh_button_mid_training_in_a_browser(training, tmp_path):
    """The page as a user sees it: answers shown, training saves a checkpoint and logs steps, Refresh. The right
    picker is on the new latest, the answers and their votes are gone, the training plot was drawn again.
    `KGPT2_SCREENSHOT_DIR=DIR` keeps the screenshot there."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from test_demo_browser import ARGS, _generate, _open, _wait_status

    from kgpt2.demo import Demo, serve

    root = training
    demo = Demo(root, "tiny", max_batch=2)
    app = serve(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    plot = "document.querySelector('#training-plot img').src"
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = _open(browser, app.local_url)
            _generate(page)
            _wait_status(page, "Which answer is better")
            before = page.evaluate(plot)
            new, _ = _saved(root), _log_steps(root / "tiny", 40)
            page.locator("#refresh").click()
            _wait_status(page, f"Right model is now tiny/{new}")  # the backticks render as code
            page.wait_for_function("document.querySelector('#vote-a').disabled", timeout=10_000)
            assert page.locator("#ckpt-b input").input_value().startswith(f"{new} · ")
            assert page.locator("#ckpt-b input").input_value().endswith("· latest")
            assert page.locator("#answer-b textarea").input_value() == ""
            page.wait_for_function(f"{plot} !== {before!r}", timeout=10_000)
            page.screenshot(path=str(tmp_path / "refresh-mid-training.png"), full_page=True)
            if os.environ.get("KGPT2_SCREENSHOT_DIR"):
                shutil.copy(tmp_path / "refresh-mid-training.png", os.environ["KGPT2_SCREENSHOT_DIR"])
            browser.close()
    finally:
        app.close()
