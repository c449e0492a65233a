# Sourced (no arguments) by the per-session GPU scripts (gpu_session12/13/14.sh) from the checkout's root, with
# SESSION set. With `--tiny` first (shifted off the caller's arguments) the commands run at tiny shapes on this
# machine's CPU, results in .tmp/gpu-tiny$SESSION (a dry run); otherwise on the device machine, set up once by
# session_prelude.sh. Sets PY, K (fused_kernels.py's --tiny), LSHAPE (lever_ablation), PSHAPE (profile_step), T (a
# factor on time limits), B and q (see session_prelude.sh), and OUT.
TINY=""; [ "${1:-}" = --tiny ] && { TINY=1; shift; }
if [ -n "$TINY" ]; then
  export OUT=${OUT:-$PWD/.tmp/gpu-tiny$SESSION} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} KERAS_BACKEND=jax PYTHONUNBUFFERED=1
  q() { grep --line-buffered -v "^WARNING\|^I0000\|^E0000\|^W0000"; }
  B="--shards .bench/shards --tokenizer .bench/tokenizer"
  PY=.venv/bin/python; K=--tiny; LSHAPE="--tiny --batch 2 --seq 64 --warmup 2 --steps 3"; T=3
  PSHAPE="--batch 2 --seq 64 --warmup 1 --steps 2"
else
  [ -n "${KGPT2_DEVICE_READY:-}" ] || source benchmarks/session_prelude.sh
  PY=python; K=""; LSHAPE="--batch 16 --seq 1024 --warmup 5 --steps 30"; T=1; PSHAPE="--steps 6"
fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
