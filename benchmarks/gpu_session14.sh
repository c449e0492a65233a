#!/usr/bin/env bash
# Session 14 (2026-12-01): calls on nvidia-h200 carrying .whl and .bench (benchmarks/make_bench_data.sh).
# Issue 21, round 10.
#   profile: where the time goes in the LoRA step with kgpt2's layer-norm kernel (measured 1% slower than XLA's
#            norms in sessions 12 and 13) and in the default full step of the committed code.
# `bash benchmarks/gpu_session14.sh blocks`: kgpt2.kernels.fused_block (residual adds inside the layer norms, q/k/v
#            gradients gathered in one kernel) against the session-13 step (RESIDUAL off) and without the q/k/v
#            kernel, full; LoRA with the layer-norm kernel (now with the residual adds) against its default; then
#            a profile of the new full step.
# `bash benchmarks/gpu_session14.sh clock`: call 2's profile had the fused step's GPU span 1.2 ms shorter than
#            call 1's old step, its ablation had both at 30.9 ms: longer interleaved runs with each step's
#            interval (p10/p50/p90) and the GPU's clocks and power sampled, then profiles of the old step and
#            of the new one under the step log the ablation times with.
# `bash benchmarks/gpu_session14.sh final`: the committed code against the session-13 step (RESIDUAL off), full
#            (100 timed steps, interleaved) and LoRA, the Hugging Face peers (own process), then the Shakespeare
#            recipe through `kgpt2 train` against nanoGPT (needs .bench/nanogpt: benchmarks/prepare_nanogpt.sh).
# `bash benchmarks/gpu_session14.sh split`: the layer-norm kernels with rows in power-of-two column chunks (768 =
#            512 + 256) and gamma's/beta's gradient sums kept element by element, against one padded 1,024-wide
#            tile (SPLIT_COLUMNS off), full and LoRA with the kernel, interleaved, 100 steps; a profile of the
#            new full step. Call 5 ran this on a working tree whose layer_norm.py had SPLIT_COLUMNS and the
#            chunked kernels; they measured -0.5% full and were reverted, so the mode now ends in error rows
#            (lever_ablation records the AttributeError and goes on).
# `bash benchmarks/gpu_session14.sh norms`: the residual layer norm's launch settings (ROWS, WARPS, GRAD_STEPS)
#            alone at 16,384 x 768 (its backward ran at ~1.75 TB/s in call 2's profile).
# `bash benchmarks/gpu_session14.sh launch`: the whole full step with call 6's best launch settings for the layer
#            norms (rows, warps, grad steps: 8/4/8, 4/4/1, 16/8/8) against the default 8/8/4, interleaved, 100 steps.
# `bash benchmarks/gpu_session14.sh --tiny [mode]`: the same commands at tiny shapes on this machine's CPU (a dry run).
set -u
cd "$(dirname "$0")/.."
SESSION=14; source benchmarks/session_shapes.sh
F=kgpt2:full:pad64; L=kgpt2:lora:pad64
if [ "${1:-}" = profile ]; then
  timeout $((100 * T)) $PY benchmarks/profile_step.py collect $B --mode lora $PSHAPE --set train.fused_layer_norm=true \
    --out-dir "$OUT/profile-lora-ln" 2>&1 | q | tail -n 30
  timeout $((100 * T)) $PY benchmarks/profile_step.py collect $B --mode full $PSHAPE --out-dir "$OUT/profile-full" 2>&1 | q | tail -n 8
  exit 0
fi
if [ "${1:-}" = blocks ]; then
  FB=mod:kgpt2.kernels.fused_block; LNK=train.fused_layer_norm=true
  V="$F;$FB.RESIDUAL=False,$F,$F;$FB.QKV=False,$L,$L;$LNK,$L;$LNK;$FB.RESIDUAL=False,$F;again,$L;$LNK;again"
  timeout $((300 * T)) $PY benchmarks/lever_ablation.py $B $LSHAPE --variants "$V" \
    --budget $((280 * T)) --out "$OUT/blocks.json" 2>&1 | q | tail -n 12
  timeout $((100 * T)) $PY benchmarks/profile_step.py collect $B --mode full $PSHAPE --out-dir "$OUT/profile-full-blocks" 2>&1 | q | tail -n 8
  exit 0
fi
if [ "${1:-}" = clock ]; then
  FB=mod:kgpt2.kernels.fused_block; OLD="$F;$FB.RESIDUAL=False"
  [ -n "$TINY" ] || { nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
    --format=csv,noheader -lms 250 > "$OUT/smi.csv" & }
  LONG="${LSHAPE/--warmup 5 --steps 30/--warmup 10 --steps 100}"
  timeout $((300 * T)) $PY benchmarks/lever_ablation.py $B $LONG --variants "$OLD,$F,$OLD;again,$F;again" \
    --budget $((280 * T)) --out "$OUT/clock.json" 2>&1 | q | tail -n 6
  timeout $((100 * T)) $PY benchmarks/profile_step.py collect $B --mode full $PSHAPE --mod kgpt2.kernels.fused_block.RESIDUAL=False \
    --out-dir "$OUT/profile-full-old" 2>&1 | q | tail -n 3
  timeout $((100 * T)) $PY benchmarks/profile_step.py collect $B --mode full $PSHAPE --step-log \
    --out-dir "$OUT/profile-full-steplog" 2>&1 | q | tail -n 3
  kill %1 2>/dev/null; exit 0
fi
if [ "${1:-}" = final ]; then
  OLD="$F;mod:kgpt2.kernels.fused_block.RESIDUAL=False"
  LONG="${LSHAPE/--warmup 5 --steps 30/--warmup 10 --steps 100}"
  timeout $((260 * T)) $PY benchmarks/lever_ablation.py $B $LONG --variants "$OLD,$F,$OLD;again,$F;again,$L,$L;again" \
    --budget $((240 * T)) --out "$OUT/final.json" 2>&1 | q | tail -n 8
  timeout $((130 * T)) $PY benchmarks/lever_ablation.py $B $LSHAPE --hf hf:full:compile,hf:lora:compile \
    --out "$OUT/peers.json" 2>&1 | q | tail -n 4
  [ -n "$TINY" ] && exit 0
  SHAKESPEARE_PROGRAM_S=110 timeout 240 bash benchmarks/shakespeare_vs_nanogpt.sh 2500
  exit 0
fi
if [ "${1:-}" = split ]; then
  ONE="mod:kgpt2.kernels.layer_norm.SPLIT_COLUMNS=False"; LNK=train.fused_layer_norm=true
  LONG="${LSHAPE/--warmup 5 --steps 30/--warmup 10 --steps 100}"
  V="$F;$ONE,$F,$F;$ONE;again,$F;again,$L;$LNK;$ONE,$L;$LNK,$L,$L;$LNK;again"
  timeout $((330 * T)) $PY benchmarks/lever_ablation.py $B $LONG --variants "$V" \
    --budget $((310 * T)) --out "$OUT/split.json" 2>&1 | q | tail -n 10
  timeout $((100 * T)) $PY benchmarks/profile_step.py collect $B --mode full $PSHAPE --out-dir "$OUT/profile-full-split" 2>&1 | q | tail -n 3
  exit 0
fi
if [ "${1:-}" = norms ]; then
  timeout $((200 * T)) $PY benchmarks/fused_kernels.py --norms ${TINY:+--tiny} --out "$OUT/norms.json" 2>&1 | q | tail -n 30
  exit 0
fi
if [ "${1:-}" = launch ]; then
  LN=mod:kgpt2.kernels.layer_norm; A="$F;$LN.WARPS=4;$LN.GRAD_STEPS=8"; C="$F;$LN.ROWS=4;$LN.WARPS=4;$LN.GRAD_STEPS=1"
  D="$F;$LN.ROWS=16;$LN.GRAD_STEPS=8"
  LONG="${LSHAPE/--warmup 5 --steps 30/--warmup 10 --steps 100}"
  timeout $((330 * T)) $PY benchmarks/lever_ablation.py $B $LONG --variants "$F,$A,$C,$D,$F;again,$A;again,$C;again" \
    --budget $((310 * T)) --out "$OUT/launch.json" 2>&1 | q | tail -n 9
  exit 0
fi
