"""The shakespeare_char recipe, as shipped, killed (SIGKILL) after a checkpoint and resumed, against the same run
uninterrupted: the user's journey with cuDNN's attention dropout on a GPU (train.attention_dropout_kernel = "auto").

Both runs train `--steps` iterations of the recipe (evaluations and checkpoints every `--every`); the killed run is
stopped `--kill-after` seconds after its first checkpoint is complete and finished with `kgpt2 train --run RUN`, as a
user whose session dropped would. Prints one JSON object: each run's exit codes, validation losses by step and the
step its checkpoints reached. With cuDNN's dropout the resumed run draws other masks than the uninterrupted one, so
the losses are expected close, not equal (docs/training.md, Resume); with `--set train.attention_dropout_kernel=xla`
they are equal.

    # on a JAX GPU (benchmarks/gpu_session8.sh resume):
    python benchmarks/recipe_resume.py --out /tmp/resume.json
    # a dry run at tiny shapes on this machine's CPU:
    python benchmarks/recipe_resume.py --tiny --steps 40 --every 20 --out /tmp/resume.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shakespeare_vs_nanogpt import KGPT2_TINY  # noqa: E402


def evals_of(run: str) -> dict:
    try:
        with open(f"{run}/logs/evals.csv") as f:
            return {int(r["step"]): round(float(r["val_loss"]), 4) for r in csv.DictReader(f) if r["val_loss"]}
    except OSError:
        return {}


def latest_step(run: str):
    from kgpt2.training.checkpoints import CheckpointManager

    ckpt = CheckpointManager(run).latest() if os.path.isdir(run) else None
    return ckpt.step if ckpt else None


def train(cmd: list[str], log: str, kill_after: float | None = None, run: str = "") -> dict:
    """Run `cmd`; with `kill_after`, SIGKILL it that many seconds after its first complete checkpoint."""
    t0 = time.time()
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        killed_at = None
        while proc.poll() is None:
            if kill_after is not None and killed_at is None and latest_step(run) is not None:
                time.sleep(kill_after)
                proc.send_signal(signal.SIGKILL)
                killed_at = latest_step(run)
            time.sleep(0.2)
    return {"exit_code": proc.returncode, "wall_s": round(time.time() - t0, 1), "killed_after_step": killed_at}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--every", type=int, default=500, help="evaluation and checkpoint interval")
    p.add_argument("--kill-after", type=float, default=2.0, help="seconds after the first checkpoint")
    p.add_argument("--char-data", default=".bench/shakespeare_char")
    p.add_argument("--root", default="/tmp/recipe-resume")
    p.add_argument("--set", action="append", default=[], help="a config override for both runs")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    d = args.char_data
    base = [sys.executable, "-m", "kgpt2.cli", "-q", "train", "--config", "shakespeare_char",
            f"checkpoints_root={args.root}", f"model.tokenizer={d}/tokenizer", f"data.shards={d}/shards",
            f"train.max_steps={args.steps}", f"train.decay_steps={args.steps}", f"train.eval_every={args.every}",
            f"train.checkpoint_every={args.every}", "train.keep_last=2"]
    base += (KGPT2_TINY if args.tiny else ["--device", "gpu"]) + args.set
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    log = os.path.splitext(args.out)[0] + ".log"
    result = {"steps": args.steps, "every": args.every, "overrides": args.set}
    result["uninterrupted"] = train(base + ["run=whole"], log)
    killed = f"{args.root}/killed"
    first = train(base + ["run=killed"], log, args.kill_after, killed)
    resumed = train([*base[:5], "--run", killed], log)
    result["killed_then_resumed"] = {"killed": first, "resumed": resumed}
    for name, run in (("uninterrupted", f"{args.root}/whole"), ("killed_then_resumed", killed)):
        result[name].update(val_losses=evals_of(run), last_checkpoint_step=latest_step(run))
    print(json.dumps(result, indent=1))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
