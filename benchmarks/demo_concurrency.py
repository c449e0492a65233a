"""The demo under load: 20 gradio_client users x 3 requests, one-at-a-time against batched.

Both servers run in this process on the same run, one after the other, with
the same requests (each user its own seed, the same prompt, `--new-tokens`
per side, end-of-text may stop an answer early). Each request is one
`/compare` call: two answers, one per picked checkpoint. Reported per mode:
p50 / p95 latency of a request (submit to last update), generated tokens
per second over the whole load (both sides counted, from the status line),
wall time, and errors. The batched mode decodes every request of a
checkpoint together in that checkpoint's engine (kgpt2.serving.answerer on
kgpt2.generation.engine: continuous batching, a request joins between launches);
one-at-a-time decodes each answer start to end before the next.

    python benchmarks/demo_concurrency.py --root checkpoints --run quickstart --out demo-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "The assert statement"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(url: str, run: str, left: str, right: str, clients: int = 20, requests: int = 3, new_tokens: int = 32) -> dict:
    """`clients` users, each sending `requests` /compare calls in a row; latency and throughput."""
    from gradio_client import Client

    users = [Client(url, verbose=False, download_files=False) for _ in range(clients)]

    def user(i):
        out = []
        for j in range(requests):
            t = time.perf_counter()
            try:
                _, _, status, *_ = users[i].predict(
                    run_a=run, ckpt_a=left, run_b=run, ckpt_b=right, arena=False, prompt=PROMPT, input_text="",
                    template="plain", sampler="top_p", temperature=0.8, top_k=50, top_p=0.95, num_beams=1,
                    max_new_tokens=new_tokens, seed=i * requests + j, api_name="/compare")
                ok = status.startswith("Done")
                tokens = sum(int(n) for n in re.findall(r"(\d+) tokens,", status))
            except Exception as e:  # noqa: BLE001 - counted as an error, the load goes on
                ok, tokens, status = False, 0, str(e)
            out.append((time.perf_counter() - t, ok, tokens, status))
        return out

    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(clients) as pool:
            results = [r for rs in pool.map(user, range(clients)) for r in rs]
    finally:
        for c in users:
            c.close()
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    return {"requests": len(results), "errors": sum(not r[1] for r in results),
            "error_examples": [r[3] for r in results if not r[1]][:3],
            "p50_s": round(statistics.median(latencies), 3),
            "p95_s": round(latencies[max(0, int(0.95 * len(latencies)) - 1)], 3),
            "tokens": sum(r[2] for r in results), "tokens_per_s": round(sum(r[2] for r in results) / wall, 1),
            "wall_s": round(wall, 2)}


def _serve(serve, demo, attempts: int = 3):
    """Launch on a free port; again if Gradio's start-up probe of its own URL (one 3 s HEAD
    request) timed out, which happens on a heavily loaded machine."""
    for attempt in range(attempts):
        try:
            return serve(demo, port=_free_port(), prevent_thread_lock=True, quiet=True)
        except ValueError as e:
            if "localhost is not accessible" not in str(e) or attempt == attempts - 1:
                raise
            # The failed app's server thread is left running on its port (no handle to it): rare, benchmark only.


def measure(root, run: str, clients: int = 20, requests: int = 3, new_tokens: int = 32, max_batch: int = 8) -> dict:
    """Both modes on the same run, one-at-a-time first; each server warmed up before it is timed."""
    from kgpt2.demo import Demo, serve

    report = {}
    for mode, batching in (("one_at_a_time", False), ("batched", True)):
        demo = Demo(root, run, batching=batching, max_batch=max_batch)
        app = _serve(serve, demo)
        try:
            load(app.local_url, run, "base", demo.latest, clients=2, requests=1, new_tokens=new_tokens)  # sessions
            report[mode] = load(app.local_url, run, "base", demo.latest, clients, requests, new_tokens)
            report[mode]["most_together"] = demo.answerer.most_together  # most requests one launch decoded
        finally:
            app.close()
    report["speedup_tokens_per_s"] = round(report["batched"]["tokens_per_s"] /
                                           max(report["one_at_a_time"]["tokens_per_s"], 1e-9), 2)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="checkpoints")
    p.add_argument("--run", default="quickstart")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--requests", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    import keras

    report = {"machine": platform.platform(), "backend": keras.backend.backend(), "date": time.strftime("%Y-%m-%d"),
              "args": {k: str(v) for k, v in vars(a).items()},
              **measure(a.root, a.run, a.clients, a.requests, a.new_tokens, a.max_batch)}
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
