"""How `kgpt2 demo` ends when it is stopped: as every verb does, one line and the status a shell expects.

SIGTERM (`timeout`, `kill`, a notebook or a scheduler stopping it) and Ctrl-C went through Gradio's own wait,
which printed "Keyboard interruption in main thread... closing server." and let the demo exit 0.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from test_demo import free_port

pytestmark = pytest.mark.backend_neutral  # the process's end; the page under it is tested in test_demo.py


def _serving(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _default_signals():
    """SIGTERM and SIGINT at their defaults, as a shell starts a command."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig, status, said", [(signal.SIGTERM, 143, "stopped (SIGTERM)"),
                                               (signal.SIGINT, 130, "interrupted")])
def test_a_stopped_demo_says_one_line_and_exits_as_every_verb(tmp_path, tiny_run, sig, status, said):
    shutil.copytree(tiny_run, tmp_path / "root" / "tiny")
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "kgpt2.cli", "demo", "--run", str(tmp_path / "root" / "tiny"),
                             "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    try:
        deadline = time.monotonic() + 300
        while not _serving(port):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the demo never listened"
            time.sleep(0.2)
        time.sleep(1.0)  # into the wait for a stop
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, (out, err)
    assert err.strip().splitlines()[-1] == f"kgpt2: {said}; every vote cast is kept in its run's votes.jsonl", err
    assert "Traceback" not in err and "Keyboard interruption" not in out + err, (out, err)
    assert out.startswith(f"demo on http://127.0.0.1:{port}") and len(out.strip().splitlines()) == 1, out
    assert not _serving(port), "the port is let go"
