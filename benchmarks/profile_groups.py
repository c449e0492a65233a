"""Group a saved generation profile's busiest kernels by fusion kind: ms a token and kernels a token.

    python benchmarks/profile_groups.py benchmarks/results/generate-h200-session5-2026-11-30.json batch_1

Reads `results.profile.<case>.top` as benchmarks/generate_latency.py --profile writes it (the 30 busiest kernels:
name, ms a token, launches a token); a fusion's kind is its name up to `_fusion`, other kernels their first 20
characters.
"""

import collections
import json
import sys


def groups(path: str, case: str) -> list[tuple[str, float, float]]:
    profile = json.load(open(path))["results"]["profile"][case]
    kinds = collections.defaultdict(lambda: [0.0, 0.0])
    for name, ms, count in profile["top"]:
        kind = name.split("_fusion")[0] if "fusion" in name else name[:20]
        kinds[kind][0] += ms
        kinds[kind][1] += count
    return sorted(((k, round(ms, 4), round(n, 2)) for k, (ms, n) in kinds.items()), key=lambda g: -g[1])


if __name__ == "__main__":
    path, case = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "batch_1"
    for kind, ms, count in groups(path, case):
        print(f"{kind:<28} {ms:8.4f} ms {count:8.2f} kernels")
