"""`kgpt2 demo`: a Gradio app that asks two checkpoints the same thing, side by side.

The run's base model is built once from its preset; each checkpoint (LoRA
adapter or full weights) is restored onto that one model, so switching
between `base`, stage ends and the latest checkpoint swaps weights without
reloading. A new model is built only when a run with a different base
(preset, shape, LoRA setting) is picked.

One prompt, two answers streamed token by token with the same seed and
sampling settings; "left is better / right is better / tie" append a
DPO-ready record to `<run>/votes.jsonl` (kgpt2.votes). A panel shows the
run's per-stage validation table, its evaluation table and their plots.

Safety: binds 127.0.0.1 unless told otherwise, no share link unless asked;
run and checkpoint names from the browser are looked up in the listing of
the checkpoints root, never opened as paths; prompt length and new tokens
are capped; the queue runs one generation at a time on the model.

    >>> from kgpt2.demo import Demo
    >>> # app = Demo("checkpoints", "quickstart").build()   # a gr.Blocks
    >>> # app.queue(default_concurrency_limit=1).launch()   # or: kgpt2 demo
"""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
from functools import partial
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from kgpt2.checkpoints import CheckpointManager
from kgpt2.errors import UserError
from kgpt2.generate import SAMPLERS, Generator, Settings
from kgpt2.run import BASE, build_run_model, list_checkpoints, list_runs, load_run_config, restore, snapshot
from kgpt2.templates import TEMPLATES, render_prompt
from kgpt2.votes import VOTES_FILE, append_vote, make_record, read_votes

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a local demo

log = logging.getLogger("kgpt2")

MAX_PROMPT_CHARS = 2000
MAX_NEW_TOKENS = 256
DEFAULT_RUN = "quickstart"


def model_key(cfg) -> str:
    """What decides the loaded base: runs with equal keys share one model."""
    key = {"model": asdict(cfg.model), "lora": asdict(cfg.lora), "precision": cfg.train.precision}
    if cfg.model.preset == "scratch":  # random weights: each run has its own base
        key["run"] = str(Path(cfg.checkpoints_root) / cfg.run)
    return json.dumps(key, sort_keys=True)


@dataclass
class _Loaded:
    key: str
    model: object
    generator: Generator
    base: list  # snapshot of the freshly built model, to go back to `base`
    weights: str  # what the variables hold now: "base" or a checkpoint directory


def _weights_id(run_dir: Path, checkpoint: str) -> str:
    """What `_Loaded.weights` holds once `checkpoint` of `run_dir` is in the model."""
    return BASE if checkpoint == BASE else str(run_dir / checkpoint)


class ModelStore:
    """The runs under one checkpoints root and the one model they are shown on."""

    def __init__(self, checkpoints_root):
        self.root = Path(checkpoints_root)
        self.lock = threading.Lock()  # the model's variables are shared state
        self.builds = 0  # models built (the tests check swaps do not rebuild)
        self.swaps = 0  # checkpoint restores
        self._loaded: _Loaded | None = None

    def runs(self) -> list[str]:
        return list_runs(self.root)

    def run_dir(self, name) -> Path:
        # Names are looked up in the listing, never joined blindly: "../x" or
        # an absolute path cannot name anything outside the root.
        runs = self.runs()
        if not isinstance(name, str) or name not in runs:
            raise UserError(f"there is no run '{name}' under the checkpoints root (runs: {', '.join(runs) or 'none'})")
        return self.root / name

    def checkpoints(self, run) -> list[tuple[str, str]]:
        """(label, id) pairs for a picker: base, then each checkpoint, stage ends named."""
        run_dir = self.run_dir(run)
        ckpts = CheckpointManager(run_dir).intact()  # a damaged checkpoint is not offered
        choices = [("base (the untrained preset)", BASE)]
        for i, c in enumerate(ckpts):
            label = c.id
            if c.stage_number is not None:
                label += f" · {'end of' if c.state.get('stage_end') else 'in'} stage {c.stage_number}"
            if i == len(ckpts) - 1:
                label += " · latest"
            choices.append((label, c.id))
        return choices

    def resolve(self, run, checkpoint) -> tuple[Path, str]:
        run_dir = self.run_dir(run)
        ids = list_checkpoints(run_dir)
        if not isinstance(checkpoint, str) or checkpoint not in ids:
            raise UserError(f"run '{run}' has no checkpoint '{checkpoint}' (it has: {', '.join(ids)})")
        return run_dir, checkpoint

    def use(self, run_dir: Path, checkpoint: str) -> _Loaded:
        """The model holding `checkpoint` of `run_dir`; call with `lock` held."""
        cfg = load_run_config(run_dir)
        key = model_key(cfg)
        if self._loaded is None or self._loaded.key != key:
            self._loaded = None
            gc.collect()
            model, tokenizer = build_run_model(cfg)
            self.builds += 1
            log.info("demo: built the base model of run %s (preset %s)", run_dir.name, cfg.model.preset)
            self._loaded = _Loaded(key, model, Generator(model, tokenizer), snapshot(model), BASE)
        loaded = self._loaded
        wanted = _weights_id(run_dir, checkpoint)
        if loaded.weights != wanted:
            loaded.weights = ""  # half-restored if this raises
            restore(loaded.model, run_dir, checkpoint, base=loaded.base)
            loaded.weights = wanted
            self.swaps += 1
        return loaded

    def stream(self, run_dir: Path, checkpoint: str, prompt: str, settings: Settings):
        """Text pieces of one answer; the lock is held per token, not across yields.

        Holding it across a `yield` would leave it locked if a client goes away
        mid-answer. Instead each token step re-checks the weights, so even two
        interleaved answers would each run on their own checkpoint.
        """
        wanted = _weights_id(run_dir, checkpoint)
        with self.lock:
            loaded = self.use(run_dir, checkpoint)
            pieces = loaded.generator.stream(prompt, settings)
        while True:
            with self.lock:
                if self._loaded is not loaded:
                    raise UserError("the model was rebuilt for another run during this answer; generate again")
                if loaded.weights != wanted:  # another answer swapped checkpoints: swap back (no config read per token)
                    self.use(run_dir, checkpoint)
                piece = next(pieces, None)
            if piece is None:
                return
            yield piece


class Demo:
    """The app's handlers over a `ModelStore`; `build()` lays them out in gr.Blocks."""

    def __init__(self, checkpoints_root="checkpoints", run: str | None = None):
        self.store = ModelStore(checkpoints_root)
        runs = self.store.runs()
        hint = "train one, or run `kgpt2 quickstart` to make the offline demo run"
        if run is None:
            run = runs[0] if runs and DEFAULT_RUN not in runs else DEFAULT_RUN
        if run == DEFAULT_RUN and run not in runs:
            raise UserError(f"there is no quickstart run under '{checkpoints_root}' yet; run `kgpt2 quickstart` "
                            "first (a few minutes on CPU, offline)")
        if run not in runs:
            raise UserError(f"there is no run '{run}' under '{checkpoints_root}' (runs there: "
                            f"{', '.join(runs) or 'none'}); {hint}")
        self.run = run
        run_dir = self.store.run_dir(run)
        self.defaults = Settings.from_config(load_run_config(run_dir).generate)
        self.latest = self.store.checkpoints(run)[-1][1]
        self.default_new_tokens = min(self.defaults.max_new_tokens or self.defaults.max_length, MAX_NEW_TOKENS)

    def warm_up(self) -> None:
        """Build the base model, restore the latest checkpoint and generate once before the first visitor.

        The generation compiles the decoding programs for the default settings,
        so the first answer in the browser does not wait for it.
        """
        with self.store.lock:
            loaded = self.store.use(*self.store.resolve(self.run, self.latest))
            loaded.generator.generate("The", replace(self.defaults, max_new_tokens=self.default_new_tokens))

    # --- handlers (names and messages are what the browser and API see) ---

    def settings(self, sampler, temperature, top_k, top_p, max_new_tokens, seed, template) -> Settings:
        if max_new_tokens is None or not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
            raise UserError(f"max new tokens must be between 1 and {MAX_NEW_TOKENS}, got {max_new_tokens}")
        s = Settings(sampler=sampler, temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                     max_new_tokens=int(max_new_tokens), seed=int(seed or 0), template=template)
        s.check()
        return s

    def compare(self, run, left, right, prompt, sampler, temperature, top_k, top_p, max_new_tokens, seed, template):
        """Yield (left answer, right answer, status, last generation) as tokens arrive."""
        import gradio as gr

        try:
            s = self.settings(sampler, temperature, top_k, top_p, max_new_tokens, seed, template)
            prompt = prompt or ""
            if not prompt.strip():
                raise UserError("type a prompt first")
            if len(prompt) > MAX_PROMPT_CHARS:
                raise UserError(f"the prompt is {len(prompt)} characters; the demo takes at most {MAX_PROMPT_CHARS}")
            sides = {"left": self.store.resolve(run, left), "right": self.store.resolve(run, right)}
            text = {"left": "", "right": ""}
            for side, (run_dir, ckpt) in sides.items():
                status = f"Generating the {side} answer ({run}/{ckpt}) …"
                yield text["left"], text["right"], status, None
                for piece in self.store.stream(run_dir, ckpt, prompt, s):
                    text[side] += piece
                    yield text["left"], text["right"], status, None
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None
        last = {"run": run, "prompt": prompt, "template": template, "model_input": render_prompt(prompt, template),
                "left_model": f"{run}/{left}", "right_model": f"{run}/{right}",
                "left_answer": text["left"], "right_answer": text["right"],
                "settings": {k: v for k, v in asdict(s).items() if k not in ("max_length", "num_beams")}}
        yield text["left"], text["right"], "Done: which answer is better?", last

    def vote(self, last, choice):
        """Append the vote on the last generation to the run's votes.jsonl; one vote per generation."""
        import gradio as gr

        if not last:
            raise gr.Error("generate two answers first; each generation takes one vote", print_exception=False)
        try:
            run_dir = self.store.run_dir(last["run"])
            record = make_record(last["prompt"], last["left_answer"], last["right_answer"], choice,
                                 last["left_model"], last["right_model"], last["settings"],
                                 template=last["template"], model_input=last["model_input"])
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None
        path = append_vote(run_dir, record)
        said = {"left": "left is better", "right": "right is better", "tie": "a tie"}[choice]
        return f"Recorded {said} in `{last['run']}/{VOTES_FILE}` ({len(read_votes(path))} votes).", None

    def metrics(self, run):
        """(summary, per-stage table, evaluation table, training plot, evaluation plot) of a run."""
        import gradio as gr
        import pandas as pd

        try:
            run_dir = self.store.run_dir(run)
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None
        stages = (pd.read_csv(run_dir / "stages.csv") if (run_dir / "stages.csv").is_file()
                  else pd.DataFrame(columns=["stage", "loss", "accuracy", "perplexity"]))
        evals = [pd.read_csv(p) for p in sorted(run_dir.glob("evaluation-*.csv"))]
        evaluation = pd.concat(evals, ignore_index=True) if evals else pd.DataFrame(columns=["model", "loss", "accuracy", "perplexity"])
        plots = [run_dir / "evaluation-test.png", run_dir / "evaluation-validation.png", *sorted(run_dir.glob("evaluation-*.png"))]
        votes = read_votes(run_dir / VOTES_FILE)
        counts = {c: sum(v.get("choice") == c for v in votes) for c in ("left", "right", "tie")}
        notes = [f"**{run}**: {len(stages)} stage(s) finished"]
        notes.append("evaluation: " + (", ".join(sorted(set(evaluation["split"]))) if "split" in evaluation
                                      else f"none yet (`kgpt2 evaluate --run {run_dir}`)"))
        notes.append(f"votes: {len(votes)} (left {counts['left']}, right {counts['right']}, tie {counts['tie']})")
        return (" · ".join(notes), stages.round(4), evaluation.round(4), _image(run_dir / "loss.png"),
                _image(next((p for p in plots if p.is_file()), None)))

    def select_run(self, run):
        """New run picked: its checkpoints in both pickers (base vs latest), and its metrics."""
        import gradio as gr

        try:
            choices = self.store.checkpoints(run)
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None
        return (gr.Dropdown(choices=choices, value=BASE), gr.Dropdown(choices=choices, value=choices[-1][1]),
                *self.metrics(run))

    def refresh_runs(self, run):
        import gradio as gr

        runs = self.store.runs()
        return gr.Dropdown(choices=runs, value=run if run in runs else (runs[0] if runs else None))

    # --- layout ---

    def build(self):
        import gradio as gr

        d, ckpts = self.defaults, self.store.checkpoints(self.run)
        with gr.Blocks(title="kgpt2 demo") as app:
            gr.Markdown("## kgpt2: two checkpoints, one prompt, side by side\nSame seed and sampling settings "
                        "for both answers. Vote to collect preference pairs for DPO.")
            with gr.Row():
                run = gr.Dropdown(self.store.runs(), value=self.run, label="Run", allow_custom_value=True, scale=4)
                refresh = gr.Button("Refresh runs", scale=1)
                left = gr.Dropdown(ckpts, value=BASE, label="Left model", allow_custom_value=True, scale=4)
                right = gr.Dropdown(ckpts, value=self.latest, label="Right model", allow_custom_value=True, scale=4)
            prompt = gr.Textbox(label=f"Prompt (at most {MAX_PROMPT_CHARS} characters)", lines=3,
                                placeholder="The assert statement", elem_id="prompt")
            with gr.Row():
                sampler = gr.Dropdown(list(SAMPLERS), value=d.sampler, label="Sampler", min_width=110)
                template = gr.Radio(list(TEMPLATES), value=d.template, label="Template", min_width=180)
                temperature = gr.Slider(0.05, 2.0, value=d.temperature, step=0.05, label="Temperature")
                top_k = gr.Slider(1, 200, value=d.top_k, step=1, label="Top-k")
                top_p = gr.Slider(0.05, 1.0, value=d.top_p, step=0.01, label="Top-p")
                max_new = gr.Slider(1, MAX_NEW_TOKENS, value=self.default_new_tokens,
                                    step=1, label="Max new tokens")
                seed = gr.Number(d.seed, precision=0, minimum=0, maximum=2**31 - 1, label="Seed", min_width=90)
            generate = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Row():
                left_out = gr.Textbox(label="Left answer", lines=8, interactive=False, elem_id="left-answer")
                right_out = gr.Textbox(label="Right answer", lines=8, interactive=False, elem_id="right-answer")
            with gr.Row():
                vote_buttons = {c: gr.Button(label) for c, label in
                                (("left", "Left is better"), ("tie", "Tie"), ("right", "Right is better"))}
            status = gr.Markdown(elem_id="status")
            last = gr.State(None)  # the last finished generation, what a vote records
            with gr.Accordion("Run metrics", open=True):
                summary = gr.Markdown()
                stages = gr.Dataframe(label="Validation after each stage (stages.csv)", interactive=False)
                evaluation = gr.Dataframe(label="Evaluation (evaluation-<split>.csv)", interactive=False)
                with gr.Row():
                    loss_png = gr.Image(label="Training (loss.png)", type="pil", interactive=False)
                    eval_png = gr.Image(label="Evaluation plot", type="pil", interactive=False)

            metric_outputs = [summary, stages, evaluation, loss_png, eval_png]
            inputs = [run, left, right, prompt, sampler, temperature, top_k, top_p, max_new, seed, template]
            # One generation at a time on the one model: the queue holds the rest.
            gr.on([generate.click, prompt.submit], self.compare, inputs, [left_out, right_out, status, last],
                  api_name="compare", concurrency_limit=1, concurrency_id="model")
            for choice, button in vote_buttons.items():
                button.click(partial(self.vote, choice=choice), [last], [status, last], api_name=f"vote_{choice}")
            run.input(self.select_run, [run], [left, right, *metric_outputs], api_name="select_run")
            refresh.click(self.refresh_runs, [run], [run], api_name="refresh_runs")
            app.load(self.metrics, [run], metric_outputs, api_name="metrics")
        return app


def _image(path):
    """A PNG read into memory: Gradio then serves a copy, so no run file is ever exposed by path."""
    if path is None or not Path(path).is_file():
        return None
    from PIL import Image

    with Image.open(path) as im:
        return im.copy()


def launch(run=None, checkpoints_root="checkpoints", host="127.0.0.1", port=7860, share=False, **launch_kwargs):
    """Build the app for `checkpoints_root` and serve it (blocks until stopped unless told otherwise).

    `run` is a run name under the root or a run directory; a directory
    elsewhere makes its parent the checkpoints root (the operator's choice;
    browser clients still only pick among the runs listed there).
    """
    if run is not None and (Path(run).parent != Path(".") or Path(run).is_absolute()):
        if Path(run).resolve().parent != Path(checkpoints_root).resolve():
            checkpoints_root = str(Path(run).parent)
        run = Path(run).name
    return serve(Demo(checkpoints_root, run), host, port, share, **launch_kwargs)


def serve(demo: Demo, host="127.0.0.1", port=7860, share=False, **launch_kwargs):
    """Warm the model up, build the app, queue it (one generation at a time) and launch it."""
    demo.warm_up()
    app = demo.build()
    app.queue(default_concurrency_limit=1, max_size=256)
    if host not in ("127.0.0.1", "localhost", "::1") or share:
        log.warning("demo: reachable beyond this machine (host %s, share %s); anyone who can reach it can "
                    "generate and vote", host, share)
    app.launch(server_name=host, server_port=port, share=share, ssr_mode=False, **launch_kwargs)
    return app
