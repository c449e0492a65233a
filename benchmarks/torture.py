"""Torture: N random SIGKILLs over a small staged run, then compare with an uninterrupted one.

    python benchmarks/torture.py --kills 100 --workdir /tmp/torture

Builds a tiny GPT-2 preset and pydoc shards (offline), trains a reference run
uninterrupted, then trains the same plan under `kgpt2 train` processes killed
with SIGKILL at random moments (uniform over the span a run takes) and
restarted until the run finishes; a finished run starts a new round under a
new name until N kills are done. It reports kills, resumes, rounds, the
largest |final weights - reference| over all rounds (goal: 0.0, bit-identical)
and files lost (goal: 0): stage exports missing or unlike the reference's,
damaged checkpoints, leftover temporary folders, step log rows missing or
repeated. Not part of the test suite (minutes to hours); results go in
docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

TINY = ["model.num_layers=2", "model.num_heads=2", "model.hidden_dim=32", "model.intermediate_dim=64",
        "model.max_sequence_length=64", "data.sequence_length=32", "train.batch_size=32", "train.epochs=1",
        "train.learning_rate=0.003", "train.warmup_steps=2", "train.eval_batches=1", "train.precision=float32",
        "train.device=cpu", "lora.enabled=false", "train.stages=[2, 2, 3]", "train.checkpoint_every=2",
        "train.keep_last=1"]


def build_fixtures(work: Path) -> tuple[Path, Path]:
    """A tiny preset and pydoc shards, as tests/conftest.py builds them."""
    import keras

    from kgpt2.config import load_config
    from kgpt2.data.shards import prepare
    from kgpt2.data.sources import open_source
    from kgpt2.model.models import build_backbone, save_preset
    from kgpt2.model.tokenizer import Tokenizer

    preset, shards = work / "preset", work / "shards"
    if not (preset.exists() and shards.exists()):
        tok = Tokenizer.train([d.text for d in open_source("pydoc")], vocab_size=512)
        cfg = load_config(None, TINY[:6] + ["model.preset=scratch", f"model.vocabulary_size={tok.vocab_size}"])
        keras.utils.set_random_seed(0)
        save_preset(build_backbone(cfg.model), tok, preset)
        prepare("pydoc", shards, tok, fractions=(0.8, 0.1, 0.1), progress=False)
    return preset, shards


def start(work: Path, preset: Path, shards: Path, run: str) -> subprocess.Popen:
    args = [*TINY, f"checkpoints_root={work / 'runs'}", f"model.preset={preset}", f"data.shards={shards}", f"run={run}"]
    return subprocess.Popen([sys.executable, "-m", "kgpt2.cli", "-q", "train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def final_arrays(run_dir: Path) -> dict:
    from kgpt2.training.checkpoints import CheckpointManager

    with np.load(CheckpointManager(run_dir).newest_intact().path / "weights.npz") as w:
        return {k: w[k] for k in w.files}


def h5_arrays(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def lost_files(run_dir: Path, reference: Path) -> list[str]:
    """What a killed-and-resumed run lacks or holds wrong, against the reference run."""
    from kgpt2.training.checkpoints import CheckpointManager

    lost = []
    for ref in sorted(reference.glob("stage-*.weights.h5")):
        mine = run_dir / ref.name
        if not mine.is_file():
            lost.append(f"{mine.name} missing")
        elif any(not np.array_equal(a, b) for a, b in zip(h5_arrays(mine).values(), h5_arrays(ref).values())):
            lost.append(f"{mine.name} differs")
    store = CheckpointManager(run_dir)
    lost += [f"{c.id} damaged: {store.damage(c)}" for c in store.list() if store.damage(c)]
    lost += [f"leftover {p.name}" for p in [*run_dir.glob(".ckpt-*"), *run_dir.glob(".trash-*")]]
    steps = [int(line.split(",")[0]) for line in (run_dir / "logs" / "steps.csv").read_text().splitlines()[1:]]
    if steps != list(range(1, len(steps) + 1)):
        lost.append("logs/steps.csv rows missing or repeated")
    return lost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/kgpt2-torture")
    a = parser.parse_args()
    work = Path(a.workdir)
    shutil.rmtree(work / "runs", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    preset, shards = build_fixtures(work)
    t0 = time.time()
    ref = start(work, preset, shards, "reference")
    assert ref.wait() == 0, ref.stderr.read()
    span = time.time() - t0
    reference = work / "runs" / "reference"
    ref_w = final_arrays(reference)

    rng = random.Random(a.seed)
    kills = resumes = rounds = 0
    max_diff, lost = 0.0, []
    while kills < a.kills:
        rounds += 1
        run = f"killed-{rounds}"
        while True:
            proc = start(work, preset, shards, run)
            try:
                proc.wait(timeout=rng.uniform(0.0, span))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                resumes += 1
                continue
            if proc.returncode != 0:
                lost.append(f"{run}: exit {proc.returncode}: {proc.stderr.read().strip()[-300:]}")
            break
        run_dir = work / "runs" / run
        w = final_arrays(run_dir)
        max_diff = max([max_diff] + [float(np.max(np.abs(w[k] - ref_w[k]))) for k in ref_w])
        lost += [f"{run}: {x}" for x in lost_files(run_dir, reference)]
        print(json.dumps({"round": rounds, "kills": kills}), flush=True)
    from kgpt2.training.checkpoints import CheckpointManager

    steps = CheckpointManager(reference).newest_intact().step
    print(json.dumps({"kills": kills, "resumes": resumes, "rounds": rounds, "steps_per_run": steps,
                      "seconds_per_run": round(span, 1),
                      "max_abs_weight_difference": max_diff, "files_lost": lost}, indent=2))
    return 0 if max_diff == 0.0 and not lost else 1


if __name__ == "__main__":
    sys.exit(main())
