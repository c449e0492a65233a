"""Shakespeare characters from scratch: nanoGPT and kgpt2's `shakespeare_char` recipe, in one call, timed alike.

Both train nanoGPT's train_shakespeare_char model (6 x 6 x 384, block 256,
batch 64, dropout 0.2, AdamW 1e-3 -> 1e-4 cosine, eval every 250 on the
train and validation splits) for the same `--iters` iterations, evaluating
at the same steps, the learning rate on the same curve (`--decay`: nanoGPT's
lr_decay_iters, kgpt2's train.decay_steps, so a run cut at 2,500 follows the
5,000-iteration schedule). nanoGPT runs unchanged (torch.compile, bf16) from
.bench/nanogpt (benchmarks/prepare_nanogpt.sh); kgpt2 runs `kgpt2 train
--config shakespeare_char` on .bench/shakespeare_char.

ms per iteration, one method for both: the wall time between two logged
points 10 iterations apart (nanoGPT prints every 10th iteration after its
loss.item() sync, stamped here as each line arrives; kgpt2's step log writes a
row per 10 steps, stamped when the step's loss reached the host), over the
windows that hold no evaluation, after the first 50 iterations (compilation).
nanoGPT's own `time ...ms` (`dt`) is reported too: it times one iteration,
the 10th of each window, up to its sync; the dt of an evaluation iteration
includes the evaluation (it runs inside nanoGPT's timed loop body).

    # on the GPU machine (benchmarks/shakespeare_vs_nanogpt.sh, in gpu_session.sh round3):
    # python benchmarks/shakespeare_vs_nanogpt.py --iters 2500 --out $OUT/shakespeare.json
    # CPU dry run at a tiny shape (both programs, every parser):
    # python benchmarks/shakespeare_vs_nanogpt.py --tiny --out /tmp/shakespeare.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ITER = re.compile(r"^iter (\d+): loss ([\d.]+), time ([\d.]+)ms")
EVAL = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
NANOGPT_TINY = ["--device=cpu", "--compile=False", "--dtype=float32", "--n_layer=1", "--n_head=2", "--n_embd=32",
                "--block_size=32", "--batch_size=4", "--eval_iters=2"]
KGPT2_TINY = ["model.num_layers=1", "model.num_heads=2", "model.hidden_dim=32", "model.intermediate_dim=128",
              "model.max_sequence_length=32", "data.sequence_length=32", "train.batch_size=4",
              "train.eval_batches=2", "train.device=cpu"]


def windows_ms(points: list[tuple[int, float]], evals: list[int], warm: int) -> dict:
    """ms per iteration over consecutive logged points (steps done, time), windows with an evaluation left out.

    An evaluation at step e (after e steps, before step e + 1) lies in the
    window (a, b] when a <= e < b.

        >>> windows_ms([(10, 1.0), (20, 1.1), (30, 1.5), (40, 1.6)], evals=[20], warm=10)
        {'median': 10.0, 'mean': 10.0, 'windows': 2, 'iterations': 20}
    """
    rows = []
    for (a, ta), (b, tb) in zip(points, points[1:]):
        if a >= warm and b > a and not any(a <= e < b for e in evals):
            rows.append(((tb - ta) * 1e3 / (b - a), b - a))
    if not rows:
        return {"median": None, "mean": None, "windows": 0, "iterations": 0}
    iterations = sum(n for _, n in rows)
    mean = sum(ms * n for ms, n in rows) / iterations
    return {"median": round(statistics.median(ms for ms, _ in rows), 3), "mean": round(mean, 3),
            "windows": len(rows), "iterations": iterations}


def stamped_run(cmd: list[str], cwd: str, log_path: str, timeout: float, env=None) -> tuple[list, int, float]:
    """Run `cmd`, stamping each output line with the time it arrived; ([(time, line)], exit code, seconds)."""
    import threading

    t0 = time.time()
    lines = []
    with open(log_path, "w") as log, subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      text=True, bufsize=1, env=env) as proc:
        watchdog = threading.Timer(timeout, proc.kill)  # a silent hang ends too; what was logged is kept
        watchdog.start()
        for line in proc.stdout:
            now = time.time()
            lines.append((now, line.rstrip("\n")))
            log.write(f"{now - t0:.4f} {line}")
        code = proc.wait()
        watchdog.cancel()
    return lines, code, time.time() - t0


def best_of(evals: list[tuple[int, float]]) -> dict:
    if not evals:
        return {}
    step, loss = min(evals, key=lambda e: e[1])
    return {"best_val_loss": round(loss, 4), "best_step": step, "final_val_loss": round(evals[-1][1], 4),
            "final_step": evals[-1][0], "val_losses": {s: round(v, 4) for s, v in evals}}


def run_nanogpt(args, out_dir: str) -> dict:
    cmd = [sys.executable, "-u", "train.py", "config/train_shakespeare_char.py", f"--max_iters={args.iters}",
           f"--lr_decay_iters={args.decay}", f"--eval_interval={args.eval_every}", f"--out_dir={out_dir}/nanogpt-out"]
    cmd += NANOGPT_TINY if args.tiny else []
    lines, code, wall = stamped_run(cmd, args.nanogpt_dir, f"{args.out_dir}/nanogpt.log", args.timeout)
    points, dts, evals, eval_steps = [], [], [], []
    for now, line in lines:
        if m := ITER.match(line):
            points.append((int(m.group(1)) + 1, now))  # iteration i printed: i + 1 steps done
            if int(m.group(1)) % args.eval_every and int(m.group(1)) >= 50:
                dts.append(float(m.group(3)))
        elif m := EVAL.match(line):
            evals.append((int(m.group(1)), float(m.group(3))))
            eval_steps.append(int(m.group(1)))
    out = {"program": "nanoGPT " + _commit(args.nanogpt_dir), "exit_code": code, "wall_s": round(wall, 1),
           "ms_per_iter": windows_ms(points, eval_steps, 50),
           "printed_dt_ms_median": round(statistics.median(dts), 3) if dts else None,
           "first_iteration_s": round(points[0][1] - lines[0][0], 1) if points and lines else None}
    out.update(best_of(evals))
    if code:
        out["tail"] = [line for _, line in lines[-5:]]
    return out


def _commit(folder: str) -> str:
    try:
        return open(os.path.join(folder, "COMMIT")).read().strip()[:7]
    except OSError:
        return "(unknown commit)"


def run_kgpt2(args, root: str) -> dict:
    d = args.char_data
    cmd = [sys.executable, "-m", "kgpt2.cli", "-q", "train", "--config", "shakespeare_char", "run=shakespeare-char",
           f"checkpoints_root={root}", f"model.tokenizer={d}/tokenizer", f"data.shards={d}/shards",
           f"train.max_steps={args.iters}", f"train.decay_steps={args.decay}", f"train.eval_every={args.eval_every}"]
    cmd += (KGPT2_TINY if args.tiny else ["--device", "gpu"]) + args.kgpt2_set
    lines, code, wall = stamped_run(cmd, os.getcwd(), f"{args.out_dir}/kgpt2.log", args.timeout)
    run = os.path.join(root, "shakespeare-char")
    points, evals = [], []
    if os.path.isfile(f"{run}/logs/steps.csv"):
        with open(f"{run}/logs/steps.csv") as f:
            points = sorted((int(r["step"]), float(r["time"])) for r in csv.DictReader(f))
    if os.path.isfile(f"{run}/logs/evals.csv"):
        with open(f"{run}/logs/evals.csv") as f:
            evals = sorted((int(r["step"]), float(r["val_loss"])) for r in csv.DictReader(f) if r["val_loss"])
    out = {"program": "kgpt2 " + _git_head(), "exit_code": code, "wall_s": round(wall, 1),
           "ms_per_iter": windows_ms(points, [s for s, _ in evals], 50), "overrides": args.kgpt2_set}
    out.update(best_of(evals))
    try:
        from kgpt2.pretrain import run_summary

        out["pretrain_summary"] = run_summary(run)  # kgpt2's own figures (median of rows, first execution)
    except Exception as e:  # noqa: BLE001 - a failed run still reports its exit code and log tail
        out["pretrain_summary"] = f"{type(e).__name__}: {e}"
    if code:
        out["tail"] = [line for _, line in lines[-5:]]
    return out


def _git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=5000)
    p.add_argument("--decay", type=int, default=5000, help="iterations of the cosine schedule (lr_decay_iters)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--nanogpt-dir", default=".bench/nanogpt")
    p.add_argument("--char-data", default=".bench/shakespeare_char")
    p.add_argument("--skip-nanogpt", action="store_true")
    p.add_argument("--kgpt2-set", action="append", default=[], help="a config override for kgpt2's run")
    p.add_argument("--timeout", type=float, default=300, help="seconds per program")
    p.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU: a dry run of both programs")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.tiny:
        args.iters, args.decay, args.eval_every = min(args.iters, 120), min(args.decay, 120), min(args.eval_every, 60)
    args.out_dir = os.path.dirname(os.path.abspath(args.out))
    work = tempfile.mkdtemp(prefix="shakespeare-")
    report = {"iterations": args.iters, "decay_iterations": args.decay, "eval_every": args.eval_every,
              "method": "median/mean ms of 10-iteration windows without an evaluation, after iteration 50"}
    if not args.skip_nanogpt:
        report["nanogpt"] = run_nanogpt(args, work)
        _write(args.out, report)
    report["kgpt2"] = run_kgpt2(args, work)
    _write(args.out, report)
    print(summary(report))


def _write(path: str, report: dict) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=1)


def summary(report: dict) -> str:
    lines = [f"Shakespeare char, {report['iterations']} iterations (cosine over {report['decay_iterations']}), "
             f"eval every {report['eval_every']}; {report['method']}",
             "program | ms/iter median | mean | nanoGPT's dt median | best val (step) | val @end | wall s | exit"]
    for key in ("nanogpt", "kgpt2"):
        r = report.get(key)
        if r:
            ms = r["ms_per_iter"]
            lines.append(f"{r['program']} | {ms['median']} | {ms['mean']} | {r.get('printed_dt_ms_median', '-')} | "
                         f"{r.get('best_val_loss')} ({r.get('best_step')}) | {r.get('final_val_loss')} | "
                         f"{r['wall_s']} | {r['exit_code']}")
    n, k = report.get("nanogpt"), report.get("kgpt2")
    if n and k and n["ms_per_iter"]["median"] and k["ms_per_iter"]["median"]:
        lines.append(f"kgpt2 / nanoGPT time per iteration: {k['ms_per_iter']['median'] / n['ms_per_iter']['median']:.3f} "
                     f"(goals: kgpt2 <= 8.5 ms and best val <= 1.46)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
