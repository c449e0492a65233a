#!/usr/bin/env bash
# Session 27 (2026-12-03): one call on nvidia-h200 carrying .whl and .bench (benchmarks/make_bench_data.sh).
# This session changed how verbs end (SIGTERM is a stop that unwinds like Ctrl-C, exit 143), when a continuation is
# recorded, evaluate's progress lines (a Keras callback called from worker threads), and what train prints before
# its first step; none of it touches the step. So: session 22's user journey on the GPU again, then a run stopped
# with SIGTERM in the middle of stage 2 on the GPU (while XLA is at work), resumed from another folder, which must
# end where an uninterrupted run ends.
# `bash benchmarks/gpu_session27.sh [--tiny] journey|sigterm` (two calls: each fits the 10-minute limit)
set -u
cd "$(dirname "$0")/.."
TINY_ARG=""; [ "${1:-}" = --tiny ] && { TINY_ARG=--tiny; shift; }
PART=${1:-}
SESSION=27; source benchmarks/session_shapes.sh $TINY_ARG
export -f q  # session 22's script skips the prelude that defines it (KGPT2_DEVICE_READY), so it takes ours
if [ "$PART" = journey ]; then bash benchmarks/gpu_session22.sh $TINY_ARG journey 2>&1 | tee "$OUT/journey.log"; exit 0; fi
[ "$PART" = sigterm ] || { echo "usage: bash benchmarks/gpu_session27.sh [--tiny] journey|sigterm" >&2; exit 2; }
W=/tmp/gj27; rm -rf $W; mkdir -p $W/c $W/elsewhere; ROOT=$PWD
case $PY in */*) PYA="$ROOT/$PY";; *) PYA="$PY";; esac; KG="$PYA -m kgpt2.cli"
source benchmarks/journey_shape.sh  # C and REST, as session 22's journey
[ -z "$TINY" ] && C="$C train.max_steps=160"  # stage 1 (16 steps) and 144 of stage 2: the stop lands in XLA's work
(cd $W/c && exec $KG train $C $REST > $W/c.log 2>&1) & PID=$!
for _ in $(seq 600); do  # until ckpt-50 or later is on disk: mid stage 2
  n=$(ls -d $W/c/checkpoints/run/ckpt-* 2>/dev/null | sed 's/.*ckpt-//' | sort -n | tail -n 1)
  [ -n "$n" ] && [ "$n" -ge 50 ] && break; sleep 0.2
done
kill -TERM $PID; wait $PID; echo "== run c, SIGTERM at ckpt-$n: exit $?"; q < $W/c.log | tail -n 2
mv $W/c/checkpoints/run $W/c-moved
(cd $W/elsewhere && timeout $((200 * T)) $KG -q train --run $W/c-moved 2>&1 | q | tail -n 3)
echo "run c, stopped by SIGTERM, moved, resumed:"; cat $W/c-moved/stages.csv
cp $W/c-moved/stages.csv "$OUT/sigterm-c-stages.csv"; cp $W/c.log "$OUT/sigterm-c.log"
