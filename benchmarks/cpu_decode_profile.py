"""Where a CPU decode launch spends its time: the query/key/value concatenation alone, then the loop by op kind.

GPT-2 124M shape, random weights, float32, one row, a 128-token cache, 32 greedy
steps a launch through kgpt2's own `Programs` (fused blocks). Prints (1) the
concatenation's time alone, the cost `Programs.concatenated_weights` keeps out
of every launch on a JAX CPU, (2) ms a token of the decode launch, (3) the JAX
profiler's op time a token, summed by op kind over XLA's CPU threads (so the
sum exceeds the wall time on 2 cores). docs/benchmarks.md, "Generation on the CPU, round 4".

    KERAS_BACKEND=jax .venv/bin/python benchmarks/cpu_decode_profile.py
    KERAS_BACKEND=jax .venv/bin/python benchmarks/cpu_decode_profile.py --bfloat16   # weights "bfloat16" on a JAX CPU
"""

from __future__ import annotations

import collections
import glob
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
STEPS = 32


def median_ms(fn, repeats=5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main():
    import jax
    import keras
    import keras_hub

    from kgpt2.generation.decoding import Programs, pack

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768,
                                             intermediate_dim=3072, max_sequence_length=1024)
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    if "--bfloat16" in sys.argv:  # as kgpt2.generate.load_for_generation loads weights "bfloat16" on a JAX CPU
        from kgpt2.generate import round_to_bfloat16
        from kgpt2.generation.fused_decode import BFLOAT16_PRODUCTS

        round_to_bfloat16(model)
        setattr(model, BFLOAT16_PRODUCTS, True)
    programs = Programs(model, 1, 128, STEPS, 1)
    values = [v.value for v in programs.variables]
    built = median_ms(lambda: jax.block_until_ready(programs._build_kept(values)))
    print(f"kept weights (concatenation{', bfloat16 products' if programs.blocks.bfloat16_products else ''}) alone: "
          f"{built:.1f} ms")
    z = np.zeros(1, "int32")
    ints, floats = pack(z + 5, z + 10, z, z + 100, z + 1, z + 1, z + 1, z, z + 1.0, z + 1.0)
    scalars = np.array([10, STEPS, 50256], "int32")
    state = {"caches": programs.empty_caches(1, 128)}

    def launch():
        state["caches"], out = programs.decode(True)(values, state["caches"], ints, floats, scalars)
        np.asarray(out)

    print(f"decode: {median_ms(launch) / STEPS:.2f} ms a token ({STEPS} a launch)")
    folder = tempfile.mkdtemp(prefix="kgpt2-cpu-profile-")
    with jax.profiler.trace(folder):
        launch()
    data = jax.profiler.ProfileData.from_file(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)[0])
    by_kind = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if "Eigen" in line.name:  # XLA's CPU worker threads
                for event in line.events:
                    if not event.name.startswith("ThunkExecutor"):
                        by_kind[re.sub(r"\.\d+$", "", event.name)] += event.duration_ns
    total = sum(by_kind.values())
    for kind, ns in by_kind.most_common(8):
        print(f"  {kind:28s} {ns / 1e6 / STEPS:6.2f} ms a token ({ns / total:.0%} of op time)")


if __name__ == "__main__":
    main()
