"""How `kgpt2 demo` starts and stops its page: which run folder `--run` names, and serving a built
`kgpt2.demo.Demo` (warm-up, the queue, the address printed, Ctrl-C / SIGTERM ending it as every verb ends).

`kgpt2.demo.launch` joins the two; this module imports no verb, so the page's handlers stay in kgpt2.demo.

    >>> from kgpt2.serving.demo_launch import run_in_root
    >>> run_in_root(None, "checkpoints")  # the first run under the root that opens (kgpt2.demo.Demo)
    ('checkpoints', None)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from kgpt2.run import load_run_config, not_a_run
from kgpt2.serving.ports import check_port

log = logging.getLogger("kgpt2")


def run_in_root(run, checkpoints_root) -> tuple:
    """(checkpoints root, run name) for `--run`: a run name under the root or a run directory (a folder in the
    working directory counts as one when the root has no run of that name); a directory elsewhere makes its
    parent the checkpoints root (the operator's choice; browser clients still only pick among the runs listed
    there)."""
    if run is not None and Path(run).is_file():  # a run's config.json, say: name the folder, not "no run"
        raise not_a_run(run, "train one, or run `kgpt2 quickstart`")
    in_root = run is not None and (Path(checkpoints_root) / run).is_dir()
    if run is not None and (Path(run).parent != Path(".") or Path(run).is_absolute()
                            or (Path(run).is_dir() and not in_root)):  # a folder here, not a name under the root
        if not (Path(run) / "config.json").is_file():
            raise not_a_run(run, "train one, or run `kgpt2 quickstart`",
                            root_hint="; or --checkpoints-root '{path}' to list them all")
        load_run_config(run)  # a preset's or a Hugging Face model's folder: that sentence, not "no run"
        if Path(run).resolve().parent != Path(checkpoints_root).resolve():
            checkpoints_root = str(Path(run).parent)
        run = Path(run).name
    return checkpoints_root, run


def serve(demo, host="127.0.0.1", port=7860, share=False, **launch_kwargs):
    """Check the port, warm the model up, build the app of `demo` (a kgpt2.demo.Demo) and launch it."""
    check_port(host, port, "another demo?")
    demo.warm_up()
    app = demo.build()
    # Generations are not serialised by Gradio: they meet in the Answerer, which batches them.
    app.queue(default_concurrency_limit=None, max_size=256)
    if host not in ("127.0.0.1", "localhost", "::1") or share:
        log.warning("demo: reachable beyond this machine (host %s, share %s); anyone who can reach it can "
                    "generate and vote", host, share)
    # Gradio's own start lines would tell the user to edit `launch()`; kgpt2 prints the address and its flag.
    kwargs = {"quiet": True, **launch_kwargs}
    block = not kwargs.pop("prevent_thread_lock", False)
    app.launch(server_name=host, server_port=port, share=share, ssr_mode=False, prevent_thread_lock=True, **kwargs)
    if not launch_kwargs.get("quiet"):
        print(f"demo on {app.local_url}" + ("" if share else " (kgpt2 demo --share: a public link as well)"),
              flush=True)
    if block:
        wait_until_stopped(app)
    return app


def wait_until_stopped(app) -> None:
    """Block until the app closes. Ctrl-C or SIGTERM (kgpt2.cli_runner raises it as an interrupt) closes the server
    and goes on up, so `kgpt2 demo` ends as every verb does (130 / 143, one line); Gradio's own `block_thread`
    swallowed it, printed its own line and the demo exited 0."""
    try:
        while app.is_running:
            time.sleep(0.1)
    except KeyboardInterrupt:
        app.close(verbose=False)  # kgpt2.cli_runner says the one line
        raise
