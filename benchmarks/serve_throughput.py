"""Aggregate decode throughput of kgpt2's batched engine at N concurrent streams, against HF `generate`.

The N-stream sections of benchmarks/generate_latency.py alone (same
options): N requests submitted together to an `Engine` with N slots and
stepped until all finish (what `kgpt2 serve` does per batch, without HTTP),
against one HF `generate` call on the same N prompts; then the decode steps
per launch at the largest N.

    KERAS_BACKEND=jax python benchmarks/serve_throughput.py --device cpu --streams 1,8 --new-tokens 16
    KERAS_BACKEND=jax python benchmarks/serve_throughput.py --device gpu --streams 1,8,32,64 --out serve-gpu.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_latency import main  # noqa: E402

if __name__ == "__main__":
    main(["--skip-batch-1", "--peers", "hf", "--xla-variants", "", "--profile", "off"] + sys.argv[1:])
