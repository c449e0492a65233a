#!/usr/bin/env bash
# Session 15 (2026-12-02): calls on nvidia-h200 carrying .whl and .bench (benchmarks/make_bench_data.sh), and the
# previous commit's kgpt2 in .bench/old (`mkdir -p .bench/old && git archive HEAD kgpt2 | tar -x -C .bench/old`).
# Issue 21, round 11.
# `bash benchmarks/gpu_session15.sh kernels`: the layer norm's backward in column chunks (a row per warp) over a
#            launch sweep, and the LM head with its loss (the logits' gradient written forward), each against the
#            old checkout's kernels; then the whole step, full and LoRA, old checkout (own process) against the
#            working tree, 100 timed steps each. Call 1 ran it on 773c3e4 with
#            benchmarks/results/round11-not-kept-session15.patch applied (the chunked backward, `head_cross_entropy`,
#            and fused_kernels.py's --head and --norms --old); both measured slower and were reverted, so without the
#            patch this mode stops at its first command.
# `bash benchmarks/gpu_session15.sh loss`: the loss's forward kernel with per-lane maxima (no cross-lane max per
#            block) against the old checkout's, alone, then the whole full step old (own process) against new, twice.
#            Call 2 ran it with benchmarks/results/loss-perlane-not-kept-session15.patch applied (reverted: slower).
# `bash benchmarks/gpu_session15.sh journey`: a user's runs on the GPU with the kernels on ("auto"): straight
#            through; SIGKILLed mid-stage, its folder moved and resumed from another folder; under train.mesh.
# `bash benchmarks/gpu_session15.sh step`: the old checkout's full step (own process), then the working tree's full
#            and LoRA steps, 100 timed steps each.
# `bash benchmarks/gpu_session15.sh --tiny [mode]`: the same commands at tiny shapes on this machine's CPU.
set -u
cd "$(dirname "$0")/.."
SESSION=15; source benchmarks/session_shapes.sh
F=kgpt2:full:pad64; L=kgpt2:lora:pad64
LONG="${LSHAPE/--warmup 5 --steps 30/--warmup 10 --steps 100}"
OLDPATH="${PYTHONPATH:-}"; OLDPATH="${OLDPATH//$PWD/$PWD/.bench/old}"  # the old kgpt2 first, the rest as it is
if [ "${1:-}" = kernels ]; then
  timeout $((150 * T)) $PY benchmarks/fused_kernels.py --norms --old .bench/old $K --out "$OUT/norms.json" 2>&1 | q | tail -n 25
  timeout $((60 * T)) $PY benchmarks/fused_kernels.py --head --old .bench/old $K --out "$OUT/head.json" 2>&1 | q | tail -n 4
  (cd /tmp && PYTHONPATH="$OLDPATH" $PY -c "import kgpt2; print('old kgpt2:', kgpt2.__file__)")
  PYTHONPATH="$OLDPATH" timeout $((160 * T)) $PY benchmarks/lever_ablation.py $B $LONG --variants "$F;old,$L;old" \
    --out "$OUT/step-old.json" 2>&1 | q | tail -n 3
  timeout $((200 * T)) $PY benchmarks/lever_ablation.py $B $LONG --variants "$F,$L,$F;again,$L;again" \
    --out "$OUT/step-new.json" 2>&1 | q | tail -n 5
  exit 0
fi
if [ "${1:-}" = loss ]; then
  timeout $((90 * T)) $PY benchmarks/fused_kernels.py --loss --old .bench/old $K --out "$OUT/loss.json" 2>&1 | q | tail -n 12
  for round in 1 2; do
    PYTHONPATH="$OLDPATH" timeout $((120 * T)) $PY benchmarks/lever_ablation.py $B $LONG --variants "$F;old" \
      --out "$OUT/loss-step-old-$round.json" 2>&1 | q | tail -n 1
    timeout $((160 * T)) $PY benchmarks/lever_ablation.py $B $LONG --variants "$F,$L" \
      --out "$OUT/loss-step-new-$round.json" 2>&1 | q | tail -n 2
  done
  exit 0
fi
if [ "${1:-}" = step ]; then
  PYTHONPATH="$OLDPATH" timeout $((120 * T)) $PY benchmarks/lever_ablation.py $B $LONG --variants "$F;old" \
    --out "$OUT/step-old.json" 2>&1 | q | tail -n 1
  timeout $((160 * T)) $PY benchmarks/lever_ablation.py $B $LONG --variants "$F,$L" --out "$OUT/step.json" 2>&1 | q | tail -n 2
  exit 0
fi
if [ "${1:-}" = journey ]; then
  # A user's run on the GPU with the default ("auto": kernels on) fused loss, layer norms and blocks: one run
  # straight through; one SIGKILLed mid-stage, its folder moved, resumed from another folder; one under train.mesh.
  W=/tmp/gj; rm -rf $W; mkdir -p $W/a $W/b $W/elsewhere; ROOT=$PWD
  case $PY in */*) KG="$ROOT/$PY -m kgpt2.cli";; *) KG="$PY -m kgpt2.cli";; esac  # the package's own entry
  source benchmarks/journey_shape.sh  # C (the model, data and training) and REST (the plan)
  (cd $W/a && timeout $((240 * T)) $KG -q train $C $REST 2>&1 | q | tail -n 2)
  (cd $W/b && exec $KG -q train $C $REST > $W/b.log 2>&1) & PID=$!
  last=$(awk -F, 'NR==2{print $0}' $W/a/checkpoints/run/stages.csv 2>/dev/null); echo "stage 1 of run a: $last"
  for _ in $(seq 600); do  # until ckpt-50 or later is on disk: mid stage 2 (stage 1 is ~16 steps on the GPU)
    n=$(ls -d $W/b/checkpoints/run/ckpt-* 2>/dev/null | sed 's/.*ckpt-//' | sort -n | tail -n 1)
    [ -n "$n" ] && [ "$n" -ge 50 ] && break; sleep 0.2
  done
  kill -9 $PID; wait $PID 2>/dev/null; echo "SIGKILL at ckpt-$n: $(ls $W/b/checkpoints/run | tr '\n' ' ')"
  mv $W/b/checkpoints/run $W/moved-run && rmdir $W/b/checkpoints
  (cd $W/elsewhere && timeout $((240 * T)) $KG -q train --run $W/moved-run 2>&1 | q | tail -n 3)
  echo "run a:"; cat $W/a/checkpoints/run/stages.csv; echo "run b, killed, moved, resumed:"; cat $W/moved-run/stages.csv
  (cd $W/elsewhere && timeout $((200 * T)) $KG -q train $C train.stages=[8,40] \
     train.mesh=data:1 train.fused_layer_norm=true 2>&1 | q | tail -n 3)
  cp $W/a/checkpoints/run/stages.csv "$OUT/journey-a-stages.csv"; cp $W/moved-run/stages.csv "$OUT/journey-b-stages.csv"
  cp $W/b.log "$OUT/journey-b-killed.log"; exit 0
fi
