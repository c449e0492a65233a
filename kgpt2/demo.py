"""`kgpt2 demo`: a Gradio arena for any two checkpoints of any runs (and their bases).

Two models answer one prompt side by side (or, in single mode, one),
streamed token by token with the same seed and sampling settings. In arena
mode they are anonymous ("Model A" / "Model B", sides drawn at random) until
the vote. Four pair votes (A better, B better, tie, both bad) and a thumb up
or down under each answer append a record to the left run's `votes.jsonl`
(kgpt2.serving.votes: DPO pairs and KTO examples; one vote per answer, kgpt2.serving.arena).
A panel shows that run's metrics and vote counts.

Roles: kgpt2.serving.model_pool loads checkpoints (one model per base, LRU within a
memory budget), kgpt2.serving.answerer decodes (concurrent users' requests batched),
kgpt2.serving.arena holds a match and its voting rules, kgpt2.serving.demo_layout lays the
page out, kgpt2.serving.run_metrics reads a run's metrics panel, kgpt2.serving.demo_refresh decides where
the pickers go at a refresh, kgpt2.serving.demo_launch starts and stops the page; this module holds the
handlers the page and the API call.

Safety: binds 127.0.0.1 unless told otherwise, no share link unless asked;
run and checkpoint names from the browser are looked up in listings, never
opened as paths; prompt length and new tokens are capped by the model.

    >>> from kgpt2.demo import Demo
    >>> # app = Demo("checkpoints", "quickstart").build()   # a gr.Blocks
    >>> # serve(Demo("checkpoints", "quickstart"))           # or: kgpt2 demo
"""

from __future__ import annotations

import getpass
import logging
import os
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import gradio as gr

from kgpt2.errors import UserError
from kgpt2.generate import Settings
from kgpt2.generation.templates import prompt_ids, render_prompt
from kgpt2.run import load_run_config
from kgpt2.serving import demo_refresh, run_metrics
from kgpt2.serving.answerer import Answerer, Job
from kgpt2.serving.arena import RATING_LABELS, VOTE_LABELS, Match, no_match_refusal
from kgpt2.serving.demo_examples import Examples, run_examples
from kgpt2.serving.demo_launch import run_in_root, serve
from kgpt2.serving.demo_layout import build as build_layout
from kgpt2.serving.model_pool import ModelPool
from kgpt2.serving.ports import check_port
from kgpt2.serving.votes import VOTES_FILE, append_vote, read_votes

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a local demo


def gradio_cache_of_this_user() -> None:
    """Gradio keeps the files it serves (the plots, the tables) in <tmp>/gradio; on a shared machine that folder
    may be another user's, and every plot then shows "Error". Then use one of this user's (Gradio's own
    GRADIO_TEMP_DIR, which a user's setting overrides); Gradio reads it when the app is built."""
    default = Path(tempfile.gettempdir()) / "gradio"
    if "GRADIO_TEMP_DIR" not in os.environ and default.exists() and not os.access(default, os.W_OK | os.X_OK):
        user = os.getuid() if hasattr(os, "getuid") else getpass.getuser()  # the uid: USER may be inherited (sudo -E)
        os.environ["GRADIO_TEMP_DIR"] = str(default.with_name(f"gradio-{user}"))


gradio_cache_of_this_user()

log = logging.getLogger("kgpt2")

MAX_PROMPT_CHARS = 2000
MAX_NEW_TOKENS = 256
DEFAULT_RUN = "quickstart"


def shown(answer: str) -> str:
    """An answer as displayed: an empty or whitespace-only answer says so instead of looking blank."""
    if answer.strip():
        return answer
    if not answer:
        return "[empty answer: the model ended the text at once]"
    return f"[an answer of whitespace only: {answer!r}]"


def _opens(run_dir) -> bool:
    try:
        load_run_config(run_dir)
        return True
    except UserError:
        return False


class Demo:
    """The app's handlers over a `ModelPool` and an `Answerer`; `build()` lays them out."""

    def __init__(self, checkpoints_root="checkpoints", run: str | None = None, batching: bool = True,
                 budget_bytes: int | None = None, max_batch: int = 8, min_step_s: float = 0.0):
        self.pool = ModelPool(checkpoints_root, slots=max_batch,
                              **({"budget_bytes": budget_bytes} if budget_bytes else {}))
        runs = self.pool.runs()
        if run is None:  # the first run that opens: one broken run beside good ones does not stop the page
            run = DEFAULT_RUN if DEFAULT_RUN in runs or not runs else next(
                (r for r in runs if _opens(self.pool.run_dir(r))), runs[0])
        if run == DEFAULT_RUN and run not in runs:
            raise UserError(f"there is no quickstart run under '{checkpoints_root}' yet; run `kgpt2 quickstart` "
                            "first (a few minutes on CPU, offline)")
        if run not in runs:
            raise UserError(f"there is no run '{run}' under '{checkpoints_root}' (runs there: "
                            f"{', '.join(runs) or 'none'}); train one, or run `kgpt2 quickstart`")
        self.run = run
        self.max_prompt_chars = MAX_PROMPT_CHARS
        self.answerer = Answerer(batching=batching, lock=self.pool.lock, min_step_s=min_step_s)
        self.defaults = Settings.from_config(load_run_config(self.pool.run_dir(run)).generate)
        self.latest = self.pool.checkpoints(run)[-1][1]
        self._stops: dict[str, threading.Event] = {}  # session -> its running generation's stop flag

    def context(self, run=None) -> int:
        cfg = load_run_config(self.pool.run_dir(run or self.run))
        return int(cfg.model.max_sequence_length)

    def max_new_tokens(self, run=None) -> int:
        """The slider's end: what the model's context leaves after a one-token prompt, at most 256."""
        return max(1, min(MAX_NEW_TOKENS, self.context(run) - 1))

    def warm_up(self) -> None:
        """Load the latest checkpoint and compile its engine's programs (prefill of a short prompt,
        the decode loop for every slot) before the first visitor would wait for them."""
        weights = self._load_latest()
        weights.engine.warm_up()  # every prefill row bucket and both decode loops: batched visitors compile nothing
        ids = weights.engine.tokenizer.encode("The")
        s = Settings.from_config(self.defaults, max_new_tokens=min(4, self.max_new_tokens()))
        for _ in self.answerer.answer_many([Job(weights, ids, min(len(ids) + 4, weights.context), s)]):
            pass

    def _load_latest(self):
        """The weights of the newest checkpoint. A run still training removes old checkpoints (its retention),
        the one listed as the newest among them while the base model was built or its weights read: then the
        newest one there now, as often as that happens."""
        while True:
            try:
                return self.pool.get(self.run, self.latest)
            except UserError:
                newest = self.pool.checkpoints(self.run)[-1][1]
                if newest == self.latest:
                    raise  # still there: damaged, its own sentence
                log.info("demo: %s of run %s was removed while the demo started (a training run keeps only its "
                         "newest checkpoints); opening on %s", self.latest, self.run, newest)
                self.latest = newest

    # --- generation ---
    def settings(self, sampler, temperature, top_k, top_p, num_beams, max_new_tokens, seed, template) -> Settings:
        if max_new_tokens is None or not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
            raise UserError(f"max new tokens must be between 1 and {MAX_NEW_TOKENS}, got {max_new_tokens}")
        s = Settings(sampler=sampler, temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                     num_beams=int(num_beams or 1), max_new_tokens=int(max_new_tokens), seed=int(seed or 0),
                     template=template)
        s.check()
        return s

    def _plan(self, match: Match, prompt, input_text, s: Settings) -> tuple[list, str]:
        """Jobs for the match's sides, and a note when the model's context caps the answer length."""
        prompt = prompt or ""
        if not prompt.strip():
            raise UserError("type a prompt first")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise UserError(f"the prompt is {len(prompt)} characters; the demo takes at most {MAX_PROMPT_CHARS}")
        weights = {side: self.pool.get(*match.picks[side]) for side in match.sides}
        model_input = render_prompt(prompt, s.template, input_text or "")  # as text, for the vote record
        # The ids `kgpt2 generate` prompts with (chat: end-of-text ids between the turns, never the text),
        # each side with its own run's tokenizer: two runs of different bases split the prompt differently.
        ids = {side: prompt_ids(w.engine.tokenizer, prompt, s.template, input_text or "") or [w.engine.tokenizer.eos_id]
               for side, w in weights.items()}
        tight = min(match.sides, key=lambda side: weights[side].context - len(ids[side]))  # the least room
        context, length = weights[tight].context, len(ids[tight])
        if context - length < 1:
            raise UserError(f"the prompt is {length} tokens; it must be shorter than the model's "
                            f"{context}-token context to leave room to answer")
        new = min(s.max_new_tokens, context - length)
        note = (f" · answers capped at {new} new tokens: the prompt takes {length} of the model's "
                f"{context}-token context" if new < s.max_new_tokens else "")
        match.prompt, match.input_text, match.template, match.model_input = prompt, input_text or "", s.template, model_input
        match.settings = asdict(s) | {"max_new_tokens": new}
        match.infos = {side: w.info for side, w in weights.items()}
        match.models = {side: w.key for side, w in weights.items()}  # "latest", "stage-2" recorded as the id
        jobs = [Job(weights[side], ids[side], len(ids[side]) + new, s) for side in match.sides]
        return jobs, note

    def compare(self, run_a, ckpt_a, run_b, ckpt_b, arena, prompt, input_text, template, sampler, temperature,
                top_k, top_p, num_beams, max_new_tokens, seed, single=False, request: gr.Request = None):
        """Yield (answer A, answer B, status, model A line, model B line, match) as tokens arrive.

        `single`: only the left pick answers (arena mode: one of the two picks,
        drawn at random); answer B stays empty. Errors are shown in place
        (status and both boxes) until the next action, and the match they
        leave refuses votes.
        """
        match = Match.draw((run_a, ckpt_a), (run_b, ckpt_b), bool(arena), single=bool(single))
        match.home = run_a  # votes go to the left run's votes.jsonl
        match.shown = {"a": (run_a, ckpt_a), "b": (run_b, ckpt_b)}
        stop = self._stop_flag(request)
        try:
            s = self.settings(sampler, temperature, top_k, top_p, num_beams, max_new_tokens, seed, template)
            jobs, note = self._plan(match, prompt, input_text, s)
        except UserError as e:
            match.failure = str(e)
            yield "", "", f"**Error:** {e}", match.label("a"), match.label("b"), match
            return
        busy = "Generating the answer …" if match.single else "Generating both answers …"
        yield "", "", busy, match.label("a"), match.label("b"), match
        done, started, last = {}, time.perf_counter(), 0.0
        for i, kind, payload in self.answerer.answer_many(jobs, cancel=stop):
            side = match.sides[i]
            if kind == "text":
                match.answers[side] += payload
            elif kind == "done":
                done[side] = payload
            else:
                match.failure = payload
            if kind != "text" or time.perf_counter() - last > 0.05:  # at most ~20 updates a second
                last = time.perf_counter()
                yield match.answers["a"], match.answers["b"], busy, match.label("a"), match.label("b"), match
        if stop.is_set() and not match.failure:
            match.failure = "stopped"
        match.finished = not match.failure
        answers = [shown(match.answers[s]) if s in match.picks else "" for s in ("a", "b")]
        yield *answers, self._status(match, done, started, note), match.label("a"), match.label("b"), match

    @staticmethod
    def _status(match: Match, done: dict, started: float, note: str) -> str:
        if match.failure == "stopped":
            return "Stopped: the answers are incomplete, so they take no vote; generate again."
        if match.failure:
            return f"**Error:** {match.failure}"
        speed = " · ".join(f"{s.upper()}: {d['tokens']} tokens, {d['tokens'] / max(d['seconds'], 1e-9):.0f} tokens/s"
                           for s, d in done.items())
        ask = ("Is it a good answer? Thumb it up or down." if match.single else
               "Which answer is better? Or rate each answer with its thumbs.")
        return f"Done in {time.perf_counter() - started:.1f} s ({speed}){note}. {ask}"

    def _stop_flag(self, request) -> threading.Event:
        flag = threading.Event()
        self._stops[getattr(request, "session_hash", None) or "api"] = flag
        return flag

    def stop(self, request: gr.Request = None) -> None:
        """Stop this session's running generation (the Stop button); its last update says "Stopped"."""
        flag = self._stops.get(getattr(request, "session_hash", None) or "api")
        if flag is not None:
            flag.set()

    # --- votes ---
    def vote(self, match, choice):
        """Record the pair vote on the shown match, reveal the identities, update the counts.

        A refused vote (nothing shown, a failed or stopped generation, a second
        vote, an answer already rated) says why in the status, in place, and records nothing.
        """
        label = VOTE_LABELS[choice]  # "A is better" keeps its capital; "Tie" -> "tie"
        return self._record(match, lambda m: m.record(choice), label if label[1] == " " else label.lower())

    def rate(self, match, side, rating):
        """Record a thumb up or down on answer `side` (a KTO example), one per answer; as `vote`."""
        return self._record(match, lambda m: m.rate(side, rating),
                            f"{RATING_LABELS[rating].lower()} for answer {side.upper()}")

    def _record(self, match, make, what: str):
        """(status, model A line, model B line, summary, match) after a vote made by `make(match)`."""
        if not isinstance(match, Match):
            return f"**Vote not recorded:** {no_match_refusal()}", "", "", gr.skip(), match
        try:
            path = append_vote(self.pool.run_dir(match.home), make(match))
        except UserError as e:
            return f"**Vote not recorded:** {e}", match.label("a"), match.label("b"), gr.skip(), match
        names = " and ".join(f"model {s.upper()} `{match.models[s]}`" for s in match.sides)
        revealed = f" It was {names}." if match.arena and match.revealed() else ""
        n = len(read_votes(path))
        status = f"Recorded {what} in `{match.home}/{VOTES_FILE}` ({n} vote{'' if n == 1 else 's'}).{revealed}"
        return status, match.label("a"), match.label("b"), self.summary(match.home), match

    @staticmethod
    def voting(match) -> list:
        """Which vote buttons are on: thumbs A (up, down), thumbs B, then the pair votes, in VOTE_LABELS' order.

        All are off until there are answers (the page's start, a picker
        changed); an answer's buttons go off once it has its vote (a pair
        vote judges both). A failed or stopped match keeps them on: a click
        says why it takes no vote.
        """
        if not isinstance(match, Match):
            return [False] * (4 + len(VOTE_LABELS))
        thumbs = [s in match.picks and not match.voted and s not in match.rated for s in ("a", "b")]
        pair = not match.single and not match.voted and not match.rated
        return [thumbs[0]] * 2 + [thumbs[1]] * 2 + [pair] * len(VOTE_LABELS)

    # --- pickers and metrics ---
    def picker_changed(self, run, checkpoint, side):
        """A picker (or the mode) changed: the old answers no longer belong to what is picked, so they go."""
        try:
            line = f"{'Left' if side == 'a' else 'Right'} model: `{run}/{checkpoint}` · {self.pool.info(run, checkpoint)}"
        except UserError as e:
            line = f"**Error:** {e}"
        return demo_refresh.cleared(f"{line}. Generate to compare.")

    def pick(self, run, checkpoint, match=None, side="a"):
        """A model picker's input: `picker_changed`, unless the pick is the one the shown answers came from (the
        picker opened and closed without a choice, which Gradio sends as an input too: it cleared the answers)."""
        if isinstance(match, Match) and match.shown.get(side) == (run, checkpoint):
            return (gr.skip(),) * 6
        return self.picker_changed(run, checkpoint, side)

    def run_changed(self, run, match=None, listed=None, side="a"):
        """New run on a side: its checkpoints (latest picked), its model's new-token limit and the page's `listed`
        state (demo_refresh); nothing changes when it is the run the shown answers came from (as `pick`)."""
        if isinstance(match, Match) and match.shown.get(side, (None,))[0] == run:
            return gr.skip(), gr.skip(), gr.skip()
        try:  # a broken run (its config.json unreadable) is said in the page, not as a bare "Error"
            choices, limit = self.pool.checkpoints(run), self.max_new_tokens(run)
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None
        ids = [c for _, c in choices]
        listed = {**(listed or {}), side: demo_refresh.listed_state(run, ids), "moved": {}}
        return gr.Dropdown(choices=choices, value=ids[-1]), gr.Slider(maximum=limit), listed

    def refresh(self, run_a, ckpt_a, run_b, ckpt_b, listed=None):
        """Runs and checkpoints as they are on disk now, and the left run's metrics: (run A, model A, run B,
        model B, summary, stages, evaluation, training plot, evaluation plot, listed, answer A, answer B, status,
        model A line, model B line, match), the page's button and the API alike. A pick that was the latest when
        `listed` follows the new latest; a vanished one falls back to it; either clears the shown answers and
        their vote, the status naming the new pick (none moved: those six unchanged). kgpt2.serving.demo_refresh."""
        return demo_refresh.refresh(self, {"a": (run_a, ckpt_a), "b": (run_b, ckpt_b)}, listed)

    def opened(self, run_a, ckpt_a, run_b, ckpt_b, listed=None):
        """A page's load: `refresh` up to `listed` (a new page shows no answers, and no status about a move)."""
        return self.refresh(run_a, ckpt_a, run_b, ckpt_b, listed)[:10]

    def summary(self, run) -> str:
        return run_metrics.summary(self.pool.run_dir(run), run)

    def metrics(self, run):
        """(summary, per-stage table, evaluation table, training plot, evaluation plot) of a run."""
        try:
            run_dir = self.pool.run_dir(run)
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None
        return run_metrics.metrics(run_dir, run)

    def examples(self, run=None, n: int = 4) -> Examples:
        return run_examples(self.pool.run_dir(run or self.run), n)

    def build(self):
        return build_layout(self)


def launch(run=None, checkpoints_root="checkpoints", host="127.0.0.1", port=7860, share=False, **launch_kwargs):
    """Build the app for `checkpoints_root` and serve it (blocks until stopped unless told otherwise).

    `run` is a run name under the root or a run directory (kgpt2.serving.demo_launch.run_in_root).
    """
    check_port(host, port, "another demo?")
    checkpoints_root, run = run_in_root(run, checkpoints_root)
    return serve(Demo(checkpoints_root, run), host, port, share, **launch_kwargs)
