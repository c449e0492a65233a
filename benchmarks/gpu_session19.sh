#!/usr/bin/env bash
# Session 19 (2026-12-02): one call on nvidia-h200 carrying .whl and .bench (benchmarks/make_bench_data.sh). Issue 21:
# the committed code re-measured after sessions 17-18 (training without TensorFlow imported; step logs written by
# kgpt2's own TensorBoard event writer), the staged trainer against its benchmark loop by the one timing method
# (the goal: within 3%; last measured 2026-11-30, before the Pallas kernels), and the Hugging Face peers in the same
# call. GPT-2 124M shape, batch 16 x 1,024, bf16, 100 timed steps after 10, each variant its own process; the card's
# power and clocks sampled every 250 ms beside it.
# `bash benchmarks/gpu_session19.sh [--tiny] check`
# `bash benchmarks/gpu_session19.sh [--tiny] lora`: call 2. check's LoRA row (654k) was 2.5-3% under session 16's
#            (665-674k, lever_ablation.py): a regression since, or the harness? Session 16's commit (1facad2, its
#            kgpt2/ in .bench/old: `mkdir -p .bench/old && git archive 1facad2 kgpt2 | tar -x -C .bench/old`) against
#            HEAD, both through lever_ablation.py, and HEAD through train_throughput.py, each alone in its process,
#            alternated twice.
set -u
cd "$(dirname "$0")/.."
SESSION=19; source benchmarks/session_shapes.sh
LONG="${LSHAPE/--warmup 5 --steps 30/--warmup 10 --steps 100}"
if [ "${1:-}" = check ]; then
  [ -z "$TINY" ] && { nvidia-smi --query-gpu=timestamp,power.draw,clocks.sm,clocks_throttle_reasons.active \
    --format=csv -lms 250 > "$OUT/clock-nvidia-smi.csv" 2>&1 & }
  V="kgpt2:full:pad64,stage,kgpt2:lora:pad64,kgpt2:full:pad64,hf:full:compile,hf:lora:compile"
  timeout $((540 * T)) $PY benchmarks/train_throughput.py $B $LONG --variants "$V" \
    --variant-timeout $((150 * T)) --out "$OUT/check.json" 2>&1 | q | tee "$OUT/check.log" | tail -n 8
  kill %1 2>/dev/null; exit 0
fi
if [ "${1:-}" = lora ]; then
  OLDPATH="${PYTHONPATH:-}"; OLDPATH="${OLDPATH//$PWD/$PWD/.bench/old}"  # the old kgpt2 first, the rest as it is
  (cd /tmp && PYTHONPATH="$OLDPATH" $PY -c "import kgpt2; print('old kgpt2:', kgpt2.__file__)")
  for round in 1 2; do
    timeout $((100 * T)) $PY benchmarks/lever_ablation.py $B $LONG --variants "kgpt2:lora:pad64" \
      --out "$OUT/lora-new-$round.json" 2>&1 | q | tail -n 1
    PYTHONPATH="$OLDPATH" timeout $((100 * T)) $PY benchmarks/lever_ablation.py $B $LONG --variants "kgpt2:lora:pad64;old" \
      --out "$OUT/lora-old-$round.json" 2>&1 | q | tail -n 1
    timeout $((100 * T)) $PY benchmarks/train_throughput.py $B $LONG --variants "kgpt2:lora:pad64" \
      --out "$OUT/lora-tt-$round.json" 2>&1 | q | tail -n 1
  done
  exit 0
fi
echo "usage: bash benchmarks/gpu_session19.sh [--tiny] check|lora" >&2; exit 2
