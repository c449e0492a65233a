"""The demo page: Gradio Blocks wired to kgpt2.demo's handlers, with one named API endpoint each.

Endpoints (gradio_client, parameter names as in `Demo`'s methods): `/compare`
(streams both answers, or one with `single`), `/stop`, `/vote_a`, `/vote_b`,
`/vote_tie`, `/vote_both_bad`, `/thumb_up_a`, `/thumb_down_a`, `/thumb_up_b`,
`/thumb_down_b`, `/pick_a`, `/pick_b`, `/run_a`, `/run_b`, `/refresh`,
`/metrics`. Generate and the votes are disabled while answers stream; the
votes until there are answers to vote on, and an answer's vote buttons once it
has its vote; single mode hides answer B and the pair votes; rows wrap on a
phone (390 px).

    >>> from kgpt2.serving.demo_layout import ELEMENT_IDS
    >>> "stop" in ELEMENT_IDS
    True
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from kgpt2.generate import SAMPLERS
from kgpt2.generation.templates import TEMPLATES
from kgpt2.run import BASE
from kgpt2.serving import demo_refresh
from kgpt2.serving.arena import RATING_LABELS, VOTE_LABELS
from kgpt2.serving.demo_examples import placeholder

ELEMENT_IDS = ("arena", "single", "run-a", "ckpt-a", "run-b", "ckpt-b", "refresh", "prompt", "input", "generate",
               "stop", "answer-a", "answer-b", "column-b", "info-a", "info-b", "thumb-up-a", "thumb-down-a",
               "thumb-up-b", "thumb-down-b", "pair-votes", "status", "summary", "sampler", "beams", "template",
               "seed", "temperature", "top-k", "top-p", "max-new", "training-plot", "evaluation-plot")
ICONS = Path(__file__).parent.parent / "assets"  # thumb icons as SVG: no emoji font needed
REFRESH_LABEL = "Refresh runs, models and metrics"
ANSWER_LINES = 10  # both boxes this tall, scrolling past it: a long answer no longer pushes its side down


def _busy():
    """Generate and every vote off, Stop on, while answers stream."""
    return [gr.Button(interactive=False)] * (5 + len(VOTE_LABELS)) + [gr.Button(interactive=True)]


def _idle(demo, match):
    """Generate on, Stop off, and the votes this match can still take."""
    return [gr.Button(interactive=True), *_vote_buttons(demo, match), gr.Button(interactive=False)]


def _vote_buttons(demo, match):
    return [gr.Button(interactive=on) for on in demo.voting(match)]


def _mode(single: bool):
    """Single mode: answer B and the pair votes hidden."""
    return gr.Column(visible=not single), gr.Row(visible=not single)


def build(demo) -> gr.Blocks:
    # Every update of a thumb button re-creates it with its icon's path, which Gradio refuses once launched unless
    # the file is static or under the working directory: it was, in the repository, and nowhere else.
    gr.set_static_paths([ICONS / f"thumb-{rating}.svg" for rating in RATING_LABELS])
    with gr.Blocks(title="kgpt2 demo") as app:
        gr.Markdown("## kgpt2 arena: compare two models, or rate one\nSame seed and settings for both. In arena mode the "
                    "models stay anonymous until you vote. Pick the better answer, or rate each one with its "
                    "thumbs: votes become DPO pairs and KTO examples (`kgpt2 align`).")
        ui = SimpleNamespace()
        _request_panel(demo, ui)
        _answer_panel(ui)
        _metrics_panel(ui)
        _wire(demo, app, ui)
    return app


def _request_panel(demo, ui) -> None:
    """Mode, pickers, prompt and input, examples, sampling settings."""
    # allow_custom_value: runs trained after start-up must be accepted (kgpt2 checks every name itself).
    ckpts, runs = demo.pool.checkpoints(demo.run), demo.pool.runs()
    # Wide enough that a phone (390 px) gives each picker its own full-width line; models get the room on a desk.
    run_picker = dict(allow_custom_value=True, min_width=160, scale=1)
    model_picker = dict(allow_custom_value=True, min_width=220, scale=2)
    with gr.Row():  # side by side on a desktop, one above the other on a phone
        with gr.Column(min_width=300):
            ui.arena = gr.Checkbox(False, label="Arena mode: hide which model is which until the vote",
                                   elem_id="arena")
        with gr.Column(min_width=300):
            ui.single = gr.Checkbox(False, label="Single model: rate one answer, the left model's (arena mode: "
                                    "either pick, drawn at random)", elem_id="single")
    with gr.Row():
        ui.run_a = gr.Dropdown(runs, value=demo.run, label="Left run", elem_id="run-a", **run_picker)
        ui.ckpt_a = gr.Dropdown(ckpts, value=BASE, label="Left model", elem_id="ckpt-a", **model_picker)
        ui.run_b = gr.Dropdown(runs, value=demo.run, label="Right run", elem_id="run-b", **run_picker)
        ui.ckpt_b = gr.Dropdown(ckpts, value=demo.latest, label="Right model", elem_id="ckpt-b", **model_picker)
    # Each side's run and its latest checkpoint as the page last listed them: a pick of that one follows the
    # run's new latest at a refresh (kgpt2.serving.demo_refresh). The right picker opens on the latest.
    latest = demo_refresh.listed_state(demo.run, [BASE, demo.latest])
    ui.listed = gr.State({"a": latest, "b": latest, "moved": {}})
    # Its own row under the pickers: beside them it wrapped to two lines at 1280 px and took the models' room
    # (a label names id, step and stage). Wide enough for its label on one line, at a phone's width too.
    with gr.Row():
        ui.refresh = gr.Button(REFRESH_LABEL, elem_id="refresh", size="md", min_width=300, scale=0)
    # The run's examples, said where they came from; the placeholder is the kind of prompt its template takes.
    examples = demo.examples()
    ui.prompt = gr.Textbox(label=f"Prompt (at most {demo.context()}-token context, {demo.max_prompt_chars} characters)",
                           lines=3, placeholder=placeholder(demo.defaults.template, examples.texts), elem_id="prompt")
    ui.input_text = gr.Textbox(label="Input (instruction template only: the record's context)", lines=1,
                               elem_id="input")
    if examples.texts:
        gr.Examples([[e] for e in examples.texts], inputs=[ui.prompt], label=examples.label)
    _sampling_panel(demo, ui)


def _sampling_panel(demo, ui) -> None:
    """Two rows: sampler, beams, template, seed; then the sampler's four numbers (all eight in one row cut their
    labels and slider ends at 1280 px)."""
    d = demo.defaults
    slider = dict(min_width=240)  # room for the label and the number box on one line; one a line on a phone
    with gr.Accordion("Sampling", open=False):
        with gr.Row(equal_height=True):
            ui.sampler = gr.Dropdown(list(SAMPLERS), value=d.sampler, label="Sampler", min_width=160,
                                     elem_id="sampler")
            ui.num_beams = gr.Slider(1, 8, value=d.num_beams, step=1, label="Beams (beam sampler)",
                                      elem_id="beams", scale=2, **slider)
            # Scale 2, as Beams: its three choices (and Beams' label) on one line.
            ui.template = gr.Radio(list(TEMPLATES), value=d.template, label="Template", min_width=300, scale=2,
                                   elem_id="template")
            ui.seed = gr.Number(d.seed, precision=0, minimum=0, maximum=2**31 - 1, label="Seed", min_width=160,
                                 elem_id="seed")
        with gr.Row(equal_height=True):
            ui.temperature = gr.Slider(0.05, 2.0, value=d.temperature, step=0.05, label="Temperature",
                                        elem_id="temperature", **slider)
            ui.top_k = gr.Slider(1, 200, value=d.top_k, step=1, label="Top-k", elem_id="top-k", **slider)
            ui.top_p = gr.Slider(0.05, 1.0, value=d.top_p, step=0.01, label="Top-p", elem_id="top-p", **slider)
            # The slider ends at the model's limit: its end label says it, the label stays one line.
            most = demo.max_new_tokens()
            ui.max_new = gr.Slider(1, most, value=min(d.max_new_tokens or d.max_length, most), step=1,
                                   label="Max new tokens", elem_id="max-new", **slider)


def _answer_panel(ui) -> None:
    """Generate / Stop, the answers with their model lines and thumbs, the pair votes, the status."""
    with gr.Row():
        ui.generate = gr.Button("Generate", variant="primary", elem_id="generate", min_width=120)
        ui.stop = gr.Button("Stop", variant="stop", elem_id="stop", interactive=False, min_width=120)
    ui.answers, ui.infos, ui.thumbs, ui.columns = {}, {}, {}, {}
    with gr.Row():
        for side in ("a", "b"):
            with gr.Column(min_width=300, elem_id=f"column-{side}") as ui.columns[side]:
                ui.answers[side] = gr.Textbox(label=f"Model {side.upper()}", lines=ANSWER_LINES,
                                              max_lines=ANSWER_LINES, interactive=False, buttons=["copy"],
                                              elem_id=f"answer-{side}")
                # Thumbs right under the equal boxes, so they line up; the model line (one or two lines) below.
                with gr.Row():
                    for rating, label in RATING_LABELS.items():
                        ui.thumbs[side, rating] = gr.Button(
                            label, icon=ICONS / f"thumb-{rating}.svg", size="md", min_width=110,
                            elem_id=f"thumb-{rating}-{side}", interactive=False)  # no answer to vote on yet
                ui.infos[side] = gr.Markdown(label=f"Model {side.upper()} info", elem_id=f"info-{side}")
    with gr.Row(elem_id="pair-votes") as ui.pair_votes:
        ui.votes = {c: gr.Button(label, elem_id=f"vote-{c.replace('_', '-')}", min_width=120, interactive=False)
                    for c, label in VOTE_LABELS.items()}
    ui.status = gr.Markdown(label="Status", elem_id="status")
    ui.match = gr.State(None)  # the shown comparison: what a vote records


def _metrics_panel(ui) -> None:
    with gr.Accordion("Run metrics (left run)", open=True):
        ui.summary = gr.Markdown(label="Summary", elem_id="summary")
        # kgpt2.serving.run_metrics.shown: the stage, its steps and batches, then its validation; "—" not measured.
        stages = gr.Dataframe(label="After each stage: steps, batches and validation (stages.csv; — where the "
                              "stage had no validation split)", interactive=False)
        evaluation = gr.Dataframe(label="Evaluation (evaluation-<split>.csv)", interactive=False)
        plots = []
        with gr.Row():
            for caption in ("Training plot", "Evaluation plot"):
                with gr.Column(min_width=300):
                    # A caption above, no label or toolbar on the image: they covered the plot's title.
                    gr.Markdown(f"**{caption}**")
                    plots.append(gr.Image(type="pil", label=caption, interactive=False, show_label=False,
                                          buttons=[], container=False, elem_id=f"{caption.split()[0].lower()}-plot"))
    ui.metric_outputs = [ui.summary, stages, evaluation, *plots]


def _wire(demo, app, ui) -> None:
    """Events: each one a client may call is named; the page's own helpers are private."""
    vote_buttons = [*ui.thumbs.values(), *ui.votes.values()]  # the order of Demo.voting
    controls = [ui.generate, *vote_buttons, ui.stop]
    shown = [ui.answers["a"], ui.answers["b"], ui.status, ui.infos["a"], ui.infos["b"], ui.match]
    inputs = [ui.run_a, ui.ckpt_a, ui.run_b, ui.ckpt_b, ui.arena, ui.prompt, ui.input_text, ui.template, ui.sampler,
              ui.temperature, ui.top_k, ui.top_p, ui.num_beams, ui.max_new, ui.seed, ui.single]
    private = dict(api_visibility="private", queue=False)
    gr.on([ui.generate.click, ui.prompt.submit], _busy, None, controls, api_name="busy", **private).then(
        demo.compare, inputs, shown, api_name="compare", concurrency_limit=None).then(
        partial(_idle, demo), [ui.match], controls, api_name="idle", **private)
    # No output: the answers' own last update says "Stopped"; a reply of Stop's that reached the page after it
    # (a loaded server) would leave a stale "Stopping" there for good.
    ui.stop.click(demo.stop, None, None, api_name="stop", queue=False)
    voted = [ui.status, ui.infos["a"], ui.infos["b"], ui.summary, ui.match]
    for choice, button in ui.votes.items():
        button.click(partial(demo.vote, choice=choice), [ui.match], voted, api_name=f"vote_{choice}").then(
            partial(_vote_buttons, demo), [ui.match], vote_buttons, api_name=f"voted_{choice}", **private)
    for (side, rating), button in ui.thumbs.items():
        button.click(partial(demo.rate, side=side, rating=rating), [ui.match], voted,
                     api_name=f"thumb_{rating}_{side}").then(
            partial(_vote_buttons, demo), [ui.match], vote_buttons, api_name=f"rated_{rating}_{side}", **private)
    # A picker or the mode changed: the answers went, and their vote buttons go off with them.
    cleared = dict(fn=partial(_vote_buttons, demo), inputs=[ui.match], outputs=vote_buttons, **private)
    for side, run, ckpt in (("a", ui.run_a, ui.ckpt_a), ("b", ui.run_b, ui.ckpt_b)):
        # The shown match goes in too: a picker opened and closed without a choice keeps the answers (Demo.pick).
        ckpt.input(partial(demo.pick, side=side), [run, ckpt, ui.match], shown, api_name=f"pick_{side}").then(
            api_name=f"pick_{side}_cleared", **cleared)
        run.input(partial(demo.run_changed, side=side), [run, ui.match, ui.listed], [ckpt, ui.max_new, ui.listed],
                  api_name=f"run_{side}").then(partial(demo.pick, side=side), [run, ckpt, ui.match], shown, api_name=f"run_{side}_picked",
                         **private).then(api_name=f"run_{side}_cleared", **cleared)
    ui.run_a.input(demo.metrics, [ui.run_a], ui.metric_outputs, api_name="metrics")
    ui.arena.input(partial(demo.picker_changed, side="a"), [ui.run_a, ui.ckpt_a], shown, api_name="mode_changed",
                   api_visibility="private").then(api_name="mode_cleared", **cleared)
    ui.single.input(partial(demo.picker_changed, side="a"), [ui.run_a, ui.ckpt_a], shown, api_name="single_changed",
                    api_visibility="private").then(_mode, [ui.single], [ui.columns["b"], ui.pair_votes],
                                                   api_name="single_layout", **private).then(
        api_name="single_cleared", **cleared)
    pickers = [ui.run_a, ui.ckpt_a, ui.run_b, ui.ckpt_b]
    # One handler for the button and the API's /refresh: the pickers, the metrics, and the answers and their vote
    # cleared when a pick moved (the run's new latest), all in the one event an API client calls. The vote buttons
    # are the page's alone: a chained event sets them.
    ui.refresh.click(demo.refresh, [*pickers, ui.listed], [*pickers, *ui.metric_outputs, ui.listed, *shown],
                     api_name="refresh").then(api_name="refresh_cleared", **cleared)
    app.load(demo.opened, [*pickers, ui.listed], [*pickers, *ui.metric_outputs, ui.listed],
             api_name="refresh_on_load", api_visibility="private")
