#!/usr/bin/env bash
# Session 12 (2026-12-01): calls on nvidia-h200 carrying .whl and .bench (benchmarks/make_bench_data.sh,
# benchmarks/prepare_nanogpt.sh for .bench/shakespeare_char). Issue 21, round 8: kgpt2's Pallas kernels.
#   kernels: benchmarks/fused_kernels.py, the loss and layer-norm kernels alone against XLA's code, with a sweep
#            of their launch settings;
#   levers:  the training step with both kernels off, the loss kernel only, and both (the "auto" default on a
#            JAX GPU), full and LoRA, and the Shakespeare recipe with them off and on (one process);
#   profile: where the default full step's time goes now.
# `bash benchmarks/gpu_session12.sh tune`: the kernels' launch settings inside the training step (module constants
# through lever_ablation's `mod:`), then the Hugging Face peers in their own process.
# `bash benchmarks/gpu_session12.sh --tiny [tune]`: the same commands at tiny shapes on this machine's CPU (a dry run).
set -u
cd "$(dirname "$0")/.."
SESSION=12; source benchmarks/session_shapes.sh
if [ "${1:-}" = tune ]; then
  F=kgpt2:full:pad64; L=kgpt2:lora:pad64; S=shakespeare; OFF="train.fused_loss=false;train.fused_layer_norm=false"
  CE=mod:kgpt2.kernels.cross_entropy; LN=mod:kgpt2.kernels.layer_norm
  V="$F;$OFF,$F,$F;$CE.BLOCK=4096;$CE.WARPS=8,$F;$CE.BLOCK=8192;$CE.WARPS=8,$F;$CE.STAGES=3,$F;$LN.GRAD_STEPS=1"
  V="$V,$F;$LN.GRAD_STEPS=8,$F;$LN.ROWS=4,$L;$OFF,$L,$L;train.fused_layer_norm=false,$S;$OFF,$S,$F;again"
  timeout $((330 * T)) $PY benchmarks/lever_ablation.py $B --char-data .bench/shakespeare_char $LSHAPE --variants "$V" \
    --budget $((310 * T)) --out "$OUT/tune.json" 2>&1 | q | tail -n 16
  timeout $((150 * T)) $PY benchmarks/lever_ablation.py $B $LSHAPE --hf hf:full:compile,hf:lora:compile \
    --out "$OUT/peers.json" 2>&1 | q | tail -n 4
  exit 0
fi
timeout $((150 * T)) $PY benchmarks/fused_kernels.py $K --out "$OUT/kernels.json" 2>&1 | q
OFF="train.fused_loss=false;train.fused_layer_norm=false"
F=kgpt2:full:pad64; L=kgpt2:lora:pad64; S=shakespeare; NO_LN=train.fused_layer_norm=false
V="$F;$OFF,$F;$NO_LN,$F;train.fused_loss=false,$F,$L;$OFF,$L;$NO_LN,$L,$S;$OFF,$S;$NO_LN,$S,$F;again"
timeout $((300 * T)) $PY benchmarks/lever_ablation.py $B --char-data .bench/shakespeare_char $LSHAPE --variants "$V" \
  --budget $((280 * T)) --out "$OUT/levers.json" 2>&1 | q | tail -n 12
timeout $((90 * T)) $PY benchmarks/profile_step.py collect $B --mode full $PSHAPE --out-dir "$OUT/profile" 2>&1 | q | tail -n 8
