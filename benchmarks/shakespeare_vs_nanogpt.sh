#!/usr/bin/env bash
# nanoGPT's train_shakespeare_char against kgpt2's recipe `shakespeare_char`, one GPU, one call, timed alike
# (benchmarks/shakespeare_vs_nanogpt.py says how). Needs .bench/nanogpt and .bench/shakespeare_char
# (benchmarks/prepare_nanogpt.sh, on the CPU machine) carried, and on the GPU machine the wheels
# (benchmarks/device_setup.sh, sourced here unless the caller did). Writes $OUT/shakespeare.json, nanogpt.log, kgpt2.log.
#   bash benchmarks/shakespeare_vs_nanogpt.sh [ITERS]        # on the GPU machine; ITERS 5000 = nanoGPT's config
#   bash benchmarks/shakespeare_vs_nanogpt.sh 120 --tiny     # CPU dry run at a tiny shape
#   KGPT2_SET="train.dropout_rng=rbg train.triton_gemm=on" bash benchmarks/shakespeare_vs_nanogpt.sh 2500
#                                                            # config overrides for kgpt2's run (space-separated)
# Full 5,000 iterations on an H200: about 150 s nanoGPT + 100 s kgpt2. 2,500 iterations on the same 5,000-iteration
# learning-rate curve (both programs' best validation loss came before 2,500 on the H100 and H200): about 100 + 70 s.
ITERS=${1:-5000}
if [ "${2:-}" = --tiny ]; then
  export OUT=${OUT:-$PWD/.tmp/gpu-tiny} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} KERAS_BACKEND=jax PYTHONUNBUFFERED=1
  PY=${PY:-/work/main/.venv/bin/python}; EXTRA="--tiny --timeout ${SHAKESPEARE_PROGRAM_S:-600}"
else
  [ -n "${KGPT2_DEVICE_READY:-}" ] || { source benchmarks/device_setup.sh || exit 1; }
  PY=${PY:-python}; EXTRA="--timeout ${SHAKESPEARE_PROGRAM_S:-$((80 + ITERS / 50))}"  # each program
fi
mkdir -p "$OUT"
[ -f .bench/nanogpt/data/shakespeare_char/train.bin ] || { echo "no .bench/nanogpt: run benchmarks/prepare_nanogpt.sh first" >&2; exit 2; }
# SKIP_NANOGPT=1: kgpt2 only (nanoGPT's H200 figures are in ../shared/ANCHORS.md: ~10.9 ms, best val 1.4667).
SET=(); for o in ${KGPT2_SET:-}; do SET+=(--kgpt2-set "$o"); done
$PY benchmarks/shakespeare_vs_nanogpt.py --iters "$ITERS" --decay 5000 --eval-every 250 $EXTRA ${SKIP_NANOGPT:+--skip-nanogpt} "${SET[@]}" \
  --out "$OUT/shakespeare.json" 2>&1 | grep -v "^WARNING\|^I0000\|^E0000\|^W0000" | tail -6
