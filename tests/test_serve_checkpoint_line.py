"""`kgpt2 serve` and `kgpt2 export` name the checkpoint they use: "(latest)" alone did not say which one.

Both print "ckpt-N: latest, end of stage S, step N" (kgpt2.serving.checkpoint_names), as a user reads it.
"""

from __future__ import annotations

import json
import socket

import pytest

pytestmark = pytest.mark.backend_neutral  # what the verbs print; serving and export run on both backends elsewhere


def latest(run) -> tuple[str, int]:
    from kgpt2.training.checkpoints import CheckpointManager

    newest = CheckpointManager(run).list()[-1]
    return newest.id, newest.step


def test_export_names_the_checkpoint_latest_is(tiny_run, tmp_path, kgpt2_cli):
    ckpt, step = latest(tiny_run)
    done = kgpt2_cli("-q", "export", "--run", tiny_run, "--to", "preset", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    line = f"({ckpt}: latest, end of stage 2, step {step})"
    assert done.stdout.strip() == f"exported {tiny_run} {line} as KerasHub preset to out"
    provenance = json.loads((tmp_path / "out" / "kgpt2_export.json").read_text())
    assert provenance["checkpoint"] == ckpt and provenance["checkpoint_line"] == line[1:-1]
    done = kgpt2_cli("-q", "export", "--run", tiny_run, "--checkpoint", "stage-1", "--to", "preset", "one",
                     cwd=tmp_path)
    assert done.returncode == 0 and ", end of stage 1, step " in done.stdout and "(ckpt-" in done.stdout
    done = kgpt2_cli("-q", "export", "--run", tiny_run, "--checkpoint", "base", "--to", "preset", "base",
                     cwd=tmp_path)
    assert done.returncode == 0 and "(base: the untrained preset)" in done.stdout


def test_serve_names_the_checkpoint_latest_is(tiny_run, tmp_path, kgpt2_cli, monkeypatch):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(kw))  # started, then stopped at once
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ckpt, step = latest(tiny_run)
    done = kgpt2_cli("-q", "serve", "--run", tiny_run, "--port", port, "--slots", "1", cwd=tmp_path)
    assert done.returncode == 0 and served, done.stderr
    assert done.stdout.splitlines()[0] == (f"serving {tiny_run.name} ({ckpt}: latest, end of stage 2, step {step}) "
                                           f"at http://127.0.0.1:{port}/v1 with 1 slots")
