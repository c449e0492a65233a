"""The demo in a real browser: Playwright driving Debian's Chromium (no browser download).

Flows: generate and stream (buttons disabled meanwhile), stop, an arena vote
that reveals the models, thumbs up / down in single mode and per side (each
answer's buttons off once it has its vote, the votes in votes.jsonl), an
error shown in place and the vote refused after it, switching runs, and the
page at phone width (390 px). Each flow saves a screenshot under the test's
temporary folder; `KGPT2_UPDATE_SCREENSHOT=1` also writes the arena one to
docs/demo.png, `KGPT2_SCREENSHOT_DIR=DIR` the thumbs ones (desktop, 390 px) to DIR.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from test_demo import PROMPT, free_port, make_demo_root

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.backend_neutral, pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is not installed")]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_run):
    from kgpt2.demo import Demo, serve

    root = make_demo_root(tmp_path_factory.mktemp("browser-root"), tiny_run, evaluate=True)
    demo = Demo(root, "tiny", max_batch=2, min_step_s=0.03)  # ~2 s answers: time to see and press buttons
    app = serve(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    yield app.local_url, demo, root
    app.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def _open(browser, url, width=1280, height=1000):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url)  # not "networkidle": Gradio keeps a heartbeat stream open
    page.locator("#prompt textarea").wait_for(timeout=60_000)
    page.wait_for_function("document.querySelector('#summary') && document.querySelector('#summary').innerText.includes('stage')",
                           timeout=60_000)
    return page


def _status(page) -> str:
    return page.locator("#status").inner_text()


def _wait_status(page, text, timeout=60_000):
    page.wait_for_function(f"document.querySelector('#status').innerText.includes({text!r})", timeout=timeout)


def _generate(page, prompt=PROMPT):
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#generate").click()


def test_generate_streams_with_buttons_disabled_then_votes_in_the_arena(served, browser, tmp_path):
    url, demo, root = served
    page = _open(browser, url)
    try:
        assert all(_disabled(page, *THUMBS, *VOTES)), "no answer yet: nothing to vote on"
        page.locator("#arena input[type=checkbox]").check()
        _generate(page)
        page.wait_for_function("document.querySelector('#generate').disabled", timeout=10_000)
        assert page.locator("#vote-a").is_disabled() and page.locator("#stop").is_enabled()
        page.wait_for_function("document.querySelector('#answer-a textarea').value.length > 0", timeout=30_000)
        partial = page.locator("#answer-a textarea").input_value()
        _wait_status(page, "Which answer is better")
        page.wait_for_function("!document.querySelector('#generate').disabled", timeout=10_000)
        assert page.locator("#stop").is_disabled() and page.locator("#vote-a").is_enabled()
        final = page.locator("#answer-a textarea").input_value()
        assert final.startswith(partial.rstrip()[:3]) and len(final) >= len(partial), "streamed, then grew"
        assert "hidden until you vote" in page.locator("#info-a").inner_text()
        page.screenshot(path=str(tmp_path / "arena-before-vote.png"), full_page=True)
        page.locator("#vote-b").click()
        _wait_status(page, "Recorded")
        info = page.locator("#info-a").inner_text() + page.locator("#info-b").inner_text()
        assert "tiny/base" in info and f"tiny/{demo.latest}" in info and "parameters" in info
        assert "votes: 1" in page.locator("#summary").inner_text(), "counts current without a reload"
        page.screenshot(path=str(tmp_path / "arena-after-vote.png"), full_page=True)
        if os.environ.get("KGPT2_UPDATE_SCREENSHOT") == "1":
            shutil.copy(tmp_path / "arena-after-vote.png", REPO / "docs" / "demo.png")
    finally:
        page.close()


def _disabled(page, *ids) -> list[bool]:
    return [page.locator(f"#{i}").is_disabled() for i in ids]


THUMBS = ("thumb-up-a", "thumb-down-a", "thumb-up-b", "thumb-down-b")
VOTES = ("vote-a", "vote-b", "vote-tie", "vote-both-bad")


def _votes(root) -> list[dict]:
    from kgpt2.serving.votes import read_votes

    return read_votes(root / "tiny" / "votes.jsonl")


def _keep(page, tmp_path, name):
    page.screenshot(path=str(tmp_path / name), full_page=True)
    if os.environ.get("KGPT2_SCREENSHOT_DIR"):
        shutil.copy(tmp_path / name, Path(os.environ["KGPT2_SCREENSHOT_DIR"]) / name)


@pytest.mark.parametrize("width", [1280, 390])
def test_thumbs_in_single_mode_and_per_side(served, browser, tmp_path, width):
    url, demo, root = served
    page = _open(browser, url, width=width, height=1000 if width > 400 else 844)
    try:
        page.locator("#single input[type=checkbox]").check()
        page.wait_for_function("!document.querySelector('#column-b') || document.querySelector('#column-b')"
                               ".offsetParent === null", timeout=10_000)
        assert not page.locator("#answer-b").is_visible() and not page.locator("#vote-a").is_visible()
        n = len(_votes(root))
        _generate(page)
        page.wait_for_function("document.querySelector('#generate').disabled", timeout=10_000)
        assert all(_disabled(page, "thumb-up-a", "thumb-down-a")), "no vote while the answer streams"
        _wait_status(page, "Thumb it up or down")
        page.wait_for_function("!document.querySelector('#generate').disabled", timeout=10_000)
        assert not any(_disabled(page, "thumb-up-a", "thumb-down-a"))
        answer = page.locator("#answer-a textarea").input_value()
        _keep(page, tmp_path, f"thumbs-single-{width}.png")
        page.locator("#thumb-up-a").click()
        _wait_status(page, "Recorded good answer")
        page.wait_for_function("document.querySelector('#thumb-up-a').disabled", timeout=10_000)
        assert all(_disabled(page, "thumb-up-a", "thumb-down-a")), "one vote per answer"
        assert f"good answer {sum(v['choice'] == 'up' for v in _votes(root))}" in page.locator("#summary").inner_text()
        rec = _votes(root)[-1]
        assert len(_votes(root)) == n + 1 and (rec["completion"], rec["label"], rec["mode"]) == (answer, True, "single")

        page.locator("#single input[type=checkbox]").uncheck()  # compare: a thumb per side
        page.locator("#answer-b").wait_for(state="visible", timeout=10_000)
        _generate(page)
        _wait_status(page, "Which answer is better")
        page.wait_for_function("!document.querySelector('#generate').disabled", timeout=10_000)
        assert not any(_disabled(page, *THUMBS, "vote-a", "vote-both-bad"))
        _keep(page, tmp_path, f"thumbs-compare-before-vote-{width}.png")
        page.locator("#thumb-down-a").click()
        _wait_status(page, "Recorded bad answer for answer A")
        page.wait_for_function("document.querySelector('#vote-a').disabled", timeout=10_000)
        assert _disabled(page, *THUMBS) == [True, True, False, False] and page.locator("#vote-tie").is_disabled()
        page.locator("#thumb-up-b").click()
        _wait_status(page, "Recorded good answer for answer B")
        page.wait_for_function("document.querySelector('#thumb-up-b').disabled", timeout=10_000)
        assert all(_disabled(page, *THUMBS))
        down, up = _votes(root)[-2:]
        assert (down["side"], down["label"], up["side"], up["label"]) == ("a", False, "b", True)
        assert up["completion"] == page.locator("#answer-b textarea").input_value()
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 2, "no sideways scrolling"
        for box in THUMBS:
            r = page.locator(f"#{box}").bounding_box()
            assert r["x"] >= 0 and r["x"] + r["width"] <= width + 1, box
        _keep(page, tmp_path, f"thumbs-compare-{width}.png")
    finally:
        page.close()


class _StopRepliesLate(dict):
    """The demo's stop flags, whose Stop reply leaves the server 2 s after the flag is set (a loaded machine):
    the answers' last update ("Stopped") then reaches the page before the Stop click's own reply."""

    def get(self, key, default=None):
        flag = super().get(key, default)
        return None if flag is None else _LateFlag(flag)


class _LateFlag:
    def __init__(self, flag):
        self.flag = flag

    def set(self):
        self.flag.set()
        time.sleep(2)


def test_stop_says_stopped_even_when_its_reply_comes_last(served, browser, monkeypatch):
    url, demo, _ = served
    monkeypatch.setattr(demo, "_stops", _StopRepliesLate(demo._stops))
    page = _open(browser, url)
    demo.answerer.min_step_s = 0.3
    try:
        _generate(page)
        page.wait_for_function("document.querySelector('#answer-a textarea').value.length > 0", timeout=30_000)
        page.locator("#stop").click()
        _wait_status(page, "Stopped")
        page.wait_for_timeout(4_000)  # past the late reply
        assert _status(page).startswith("Stopped"), _status(page)
    finally:
        demo.answerer.min_step_s = 0.03
        page.close()


def test_stop_and_an_error_in_place_refuse_the_vote(served, browser, tmp_path):
    url, demo, _ = served
    page = _open(browser, url)
    demo.answerer.min_step_s = 0.3  # ~20 s answers: Stop lands mid-answer even on a loaded machine
    try:
        _generate(page)
        page.wait_for_function("document.querySelector('#answer-a textarea').value.length > 0", timeout=30_000)
        page.locator("#stop").click()
        _wait_status(page, "Stopped")
        demo.answerer.min_step_s = 0.03
        page.locator("#vote-a").click()
        _wait_status(page, "Vote not recorded")
        page.screenshot(path=str(tmp_path / "stopped.png"), full_page=True)

        _generate(page, "The assert statement " * 30)
        _wait_status(page, "Error")
        assert "64-token context" in _status(page)
        page.wait_for_timeout(12_000)  # longer than a toast lives: the reason stays in place
        assert "64-token context" in _status(page)
        page.locator("#vote-tie").click()
        _wait_status(page, "Vote not recorded")
        assert "did not finish" in _status(page)
        page.screenshot(path=str(tmp_path / "error-in-place.png"), full_page=True)
    finally:
        demo.answerer.min_step_s = 0.03
        page.close()


def test_switching_the_right_run_to_another_base(served, browser, tmp_path):
    url, demo, _ = served
    page = _open(browser, url)
    try:
        page.locator("#run-b input").click()
        page.get_by_role("option", name="tiny-lora").click()
        _wait_status(page, "tiny-lora/base")  # the picker named the model and cleared the answers
        assert page.locator("#answer-a textarea").input_value() == ""
        _generate(page)
        _wait_status(page, "Which answer is better")
        assert "tiny-lora/base" in page.locator("#info-b").inner_text()
        assert "LoRA" in page.locator("#info-b").inner_text()
        page.screenshot(path=str(tmp_path / "two-runs.png"), full_page=True)
        assert not any(_disabled(page, *THUMBS, *VOTES))
        page.locator("#run-b input").click()
        page.get_by_role("option", name="tiny-copy").click()
        _wait_status(page, "tiny-copy/")
        page.wait_for_function("document.querySelector('#vote-a').disabled", timeout=10_000)
        assert all(_disabled(page, *THUMBS, *VOTES)), "the answers went with the old pick, and their votes"
    finally:
        page.close()


def test_answers_line_up_and_the_sampling_panel_fits_at_1280(served, browser, monkeypatch):
    """A long answer B grew its box (lines=8, no max_lines): A's thumbs floated higher than B's. The Sampling panel
    held eight controls in one row: "Top-k" wrapped, the slider ends were cut ("2(" for 200), number boxes uneven."""
    url, demo, _ = served

    def answers(jobs, cancel=None):  # one short answer and one of 30 lines, whatever the models say
        yield 0, "text", "A short answer."
        yield 1, "text", "A long answer,\n" * 30
        yield from ((i, "done", {"tokens": 3, "seconds": 0.1}) for i in (0, 1))

    monkeypatch.setattr(demo.answerer, "answer_many", answers)
    page = _open(browser, url, width=1280, height=900)
    try:
        _generate(page)
        _wait_status(page, "Which answer is better")
        a, b = (page.locator(f"#answer-{s}").bounding_box() for s in "ab")
        assert (a["y"], a["height"]) == pytest.approx((b["y"], b["height"]), abs=1), "boxes of one fixed height"
        up_a, up_b = (page.locator(f"#thumb-up-{s}").bounding_box() for s in "ab")
        assert up_a["y"] == pytest.approx(up_b["y"], abs=1), "the thumbs line up"
        page.get_by_text("Sampling", exact=True).click()
        page.locator("#top-k").wait_for(state="visible", timeout=10_000)
        sliders = ("temperature", "top-k", "top-p", "max-new", "beams")
        labels = [page.locator(f"#{s} [data-testid=block-info]").bounding_box()["height"] for s in sliders]
        assert max(labels) == pytest.approx(min(labels), abs=1), dict(zip(sliders, labels))
        numbers = [page.locator(f"#{s} input[type=number]").bounding_box()["y"] for s in sliders[:4]]
        assert max(numbers) - min(numbers) <= 1, "the number boxes of a row at one height"
        for s in sliders:
            end = page.locator(f"#{s} [data-testid=max-value]").bounding_box()
            block = page.locator(f"#{s}").bounding_box()
            assert end["x"] + end["width"] <= block["x"] + block["width"] + 1, f"{s}'s end label cut"
        sampler = page.locator("#sampler input")
        assert sampler.evaluate("e => e.scrollWidth <= e.clientWidth + 1") and sampler.bounding_box()["width"] > 100
    finally:
        page.close()


LINES_OF_TEXT = """e => {
    const tops = new Set(), walker = document.createTreeWalker(e, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) {
        const range = document.createRange();
        range.selectNodeContents(walker.currentNode);
        for (const r of range.getClientRects()) if (r.width > 0) tops.add(Math.round(r.top));
    }
    return tops.size;
}"""


@pytest.mark.parametrize("width", [1280, 390])
def test_the_refresh_button_and_the_model_pickers_fit(served, browser, width):
    """"Refresh runs, models and metrics" sat beside the pickers and wrapped to two lines at 1280 px; the model
    pickers, which name a checkpoint's id, step and stage, must show their whole label."""
    url, _, _ = served
    page = _open(browser, url, width=width, height=900)
    try:
        assert page.locator("#refresh").evaluate(LINES_OF_TEXT) == 1, "the button's label on one line"
        button = page.locator("#refresh").bounding_box()
        assert button["x"] >= 0 and button["x"] + button["width"] <= width, "no sideways scrolling for it"
        for picker in ("#ckpt-a input", "#ckpt-b input"):
            assert page.locator(picker).evaluate("e => e.scrollWidth <= e.clientWidth + 1"), picker
    finally:
        page.close()


def test_phone_width(served, browser, tmp_path):
    url, _, _ = served
    page = _open(browser, url, width=390, height=844)
    try:
        assert page.evaluate("document.documentElement.scrollWidth") <= 392, "no sideways scrolling"
        _generate(page)
        _wait_status(page, "Which answer is better")
        for box in ("#answer-a", "#answer-b", "#generate", "#vote-both-bad"):
            r = page.locator(box).bounding_box()
            assert r["x"] >= 0 and r["x"] + r["width"] <= 391, box
        for picker in ("#ckpt-a input", "#ckpt-b input"):  # a model's label was cut at half the width
            assert page.locator(picker).evaluate("e => e.scrollWidth <= e.clientWidth + 1"), picker
        page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    finally:
        page.close()


def test_a_picker_opened_and_closed_without_a_choice_keeps_the_answers(served, browser, tmp_path):
    """Gradio sends an opened and closed dropdown's value as an input: both answers went, and their votes."""
    url, _, _ = served
    page = _open(browser, url)
    try:
        _generate(page)
        _wait_status(page, "Which answer is better")
        page.wait_for_function("!document.querySelector('#generate').disabled", timeout=10_000)
        answer = page.locator("#answer-b textarea").input_value()
        for picker in ("#ckpt-b input", "#run-a input"):
            page.locator(picker).click()
            page.get_by_role("option").first.wait_for(timeout=10_000)
            page.locator("#prompt textarea").click()  # closed by a click elsewhere
            page.wait_for_timeout(3_000)  # the input's round trip
        assert page.locator("#answer-b textarea").input_value() == answer and "Which answer" in _status(page)
        page.locator("#vote-b").click()
        _wait_status(page, "Recorded B is better")
        page.screenshot(path=str(tmp_path / "picker-closed-then-vote.png"), full_page=True)
    finally:
        page.close()
