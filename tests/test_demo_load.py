"""20 gradio_client users x 2 requests against the demo: no errors, and the batched demo really
decodes several visitors' requests in one launch while the one-at-a-time demo never does.

Both modes run on the same tiny run in this process (benchmarks/demo_concurrency.py). Which mode is
faster is a benchmark figure, not a test: its numbers are in docs/benchmarks.md (since the engine's
decode loop became one launch per request, one-at-a-time matches batched tokens/s on this CPU's tiny
model; batched keeps the lower median latency).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from test_demo import make_demo_root

pytestmark = pytest.mark.backend_neutral  # the demo under load (its UI and queue)

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_concurrency.py"


@pytest.mark.slow
def test_twenty_users_two_requests_each_batched_together_without_errors(tmp_path, tiny_run):
    spec = importlib.util.spec_from_file_location("demo_concurrency", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    root = make_demo_root(tmp_path, tiny_run, evaluate=False)
    report = bench.measure(root, "tiny", clients=20, requests=2, new_tokens=16)  # 2 x 16: CI time
    serial, batched = report["one_at_a_time"], report["batched"]
    assert serial["requests"] == batched["requests"] == 40
    assert serial["errors"] == 0 and batched["errors"] == 0, (serial["error_examples"], batched["error_examples"])
    assert batched["most_together"] >= 4, report  # 20 visitors at once: several rows per launch
    assert serial["most_together"] <= 1, report
    assert batched["tokens"] == serial["tokens"] > 0, report  # the same answers' lengths (same seeds)
