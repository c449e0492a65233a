#!/usr/bin/env bash
# Session 22 (2026-12-02): one call on nvidia-h200 carrying .whl and .bench (benchmarks/make_bench_data.sh).
# Sessions 20-21 changed what `kgpt2 train` does before its first step (device, precision, distribution and the stage
# plan resolved before the run folder is made or locked; a GPU that is asked for and missing is one sentence) and
# what evaluate writes, without a GPU. So: a user's journey on the GPU, every verb from the package's own entry point
# in folders other than the checkout, then the committed step re-measured with its Hugging Face peers.
# `bash benchmarks/gpu_session22.sh [--tiny] journey`: train a 6 x 512 model from scratch in two stages; a second
#            run SIGKILLed mid-stage 2, moved, resumed from a third folder; a GPU that does not exist (gpu:7); evaluate
#            every checkpoint and the base; greedy generation against the exported model in transformers on the GPU.
# `bash benchmarks/gpu_session22.sh [--tiny] check`: full, staged trainer, LoRA, HF + torch.compile, HF + PEFT +
#            torch.compile, each in its own process, 100 timed steps after 10 (as session 19's `check`).
set -u
cd "$(dirname "$0")/.."
SESSION=22; source benchmarks/session_shapes.sh
LONG="${LSHAPE/--warmup 5 --steps 30/--warmup 10 --steps 100}"
if [ "${1:-}" = journey ]; then
  W=/tmp/gj22; rm -rf $W; mkdir -p $W/a $W/b $W/elsewhere; ROOT=$PWD
  case $PY in */*) PYA="$ROOT/$PY";; *) PYA="$PY";; esac; KG="$PYA -m kgpt2.cli"
  source benchmarks/journey_shape.sh  # C (the model, data and training) and REST (the plan)
  echo "== a GPU that is not there"; (cd $W/elsewhere && $KG -q train $C $REST --device gpu:7 2>&1 | q | tail -n 2; \
    echo "exit ${PIPESTATUS[0]}; left behind: $(ls $W/elsewhere | tr '\n' ' ')")
  echo "== run a, straight through"; (cd $W/a && timeout $((200 * T)) $KG -q train $C $REST 2>&1 | q | tail -n 2)
  (cd $W/b && exec $KG -q train $C $REST > $W/b.log 2>&1) & PID=$!
  for _ in $(seq 600); do  # until ckpt-50 or later is on disk: mid stage 2 (stage 1 is ~16 steps)
    n=$(ls -d $W/b/checkpoints/run/ckpt-* 2>/dev/null | sed 's/.*ckpt-//' | sort -n | tail -n 1)
    [ -n "$n" ] && [ "$n" -ge 50 ] && break; sleep 0.2
  done
  kill -9 $PID; wait $PID 2>/dev/null; echo "== run b SIGKILLed at ckpt-$n: $(ls $W/b/checkpoints/run | tr '\n' ' ')"
  mv $W/b/checkpoints/run $W/moved-run && rmdir $W/b/checkpoints
  (cd $W/elsewhere && timeout $((200 * T)) $KG -q train --run $W/moved-run 2>&1 | q | tail -n 3)
  echo "run a:"; cat $W/a/checkpoints/run/stages.csv; echo "run b, killed, moved, resumed:"; cat $W/moved-run/stages.csv
  echo "== evaluate"; (cd $W/elsewhere && timeout $((150 * T)) $KG -q evaluate --run $W/moved-run --checkpoint all \
    --compare base --max-batches 8 2>&1 | q | tail -n 6)
  echo "== generate, then the same greedy tokens from the exported model in transformers"
  (cd $W/elsewhere && timeout $((100 * T)) $KG -q generate --run $W/moved-run --prompt "The patients were" \
    --sampler greedy --max-new-tokens 24 2>&1 | q | tail -n 3 | tee $W/kgpt2-greedy.txt)
  (cd $W/elsewhere && timeout $((100 * T)) $KG -q export --run $W/moved-run --to hf --out $W/hf 2>&1 | q | tail -n 2)
  (cd $W/elsewhere && timeout $((100 * T)) $PYA "$ROOT/benchmarks/hf_greedy.py" $W/hf "The patients were" 24 2>&1 | q | tail -n 3 | tee $W/hf-greedy.txt)
  cp $W/a/checkpoints/run/stages.csv "$OUT/journey-a-stages.csv"; cp $W/moved-run/stages.csv "$OUT/journey-b-stages.csv"
  cp $W/moved-run/evaluation-*.csv "$OUT/" 2>/dev/null; cp $W/*greedy.txt $W/b.log "$OUT/"; exit 0
fi
if [ "${1:-}" = check ]; then
  [ -z "$TINY" ] && { nvidia-smi --query-gpu=timestamp,power.draw,clocks.sm,clocks_throttle_reasons.active \
    --format=csv -lms 250 > "$OUT/clock-nvidia-smi.csv" 2>&1 & }
  V="kgpt2:full:pad64,stage,kgpt2:lora:pad64,hf:full:compile,hf:lora:compile"
  timeout $((420 * T)) $PY benchmarks/train_throughput.py $B $LONG --variants "$V" \
    --variant-timeout $((150 * T)) --out "$OUT/check.json" 2>&1 | q | tee "$OUT/check.log" | tail -n 8
  kill %1 2>/dev/null; exit 0
fi
echo "usage: bash benchmarks/gpu_session22.sh [--tiny] journey|check" >&2; exit 2
