#!/usr/bin/env bash
# Session 8 (2026-11-30): one call on `nvidia-h200`, carrying .whl and .bench (benchmarks/prepare_nanogpt.sh made
# .bench/shakespeare_char). `resume`: the shakespeare_char recipe as shipped (cuDNN's attention dropout on a JAX
# GPU) killed with SIGKILL after its first checkpoint and resumed with `kgpt2 train --run`, beside the same run
# uninterrupted (benchmarks/recipe_resume.py). Writes $OUT/resume.json and resume.log.
set -u
cd "$(dirname "$0")/.."
[ -n "${KGPT2_DEVICE_READY:-}" ] || source benchmarks/session_prelude.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
case "${1:-}" in
resume)
  python benchmarks/recipe_resume.py --steps "${RESUME_STEPS:-1000}" --every "${RESUME_EVERY:-500}" --kill-after 1 \
    --out "$OUT/resume.json" 2>&1 | q | tail -n 60
  ;;
*) echo "usage: bash benchmarks/gpu_session8.sh resume"; exit 2 ;;
esac
