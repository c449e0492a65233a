#!/usr/bin/env bash
# Session 13 (2026-12-01): calls on nvidia-h200 carrying .whl and .bench (benchmarks/make_bench_data.sh).
# Issue 21, round 9: the loss kernel with less work per logit, its gradient as a Pallas kernel, cuBLASLt epilogues.
#   levers:  full and LoRA steps with session 12's loss kernel (`FORWARD=round8`), the new one, the new one with
#            the Pallas gradient, and cuBLASLt (GELU/bias epilogues), one process;
#   profile: where the default full step's time goes now (60 kernels kept).
# `bash benchmarks/gpu_session13.sh tune`: the code after call 1 (the Pallas gradient kept, session 12's forward
# gone, gamma's and beta's partial sums in one array): both kernels off against the default, the layer norm's
# backward pipelined (GRAD_STAGES), the loss kernels' launch settings, then the Hugging Face peers (own process).
# `bash benchmarks/gpu_session13.sh memory`: XLA's dot merger off, GELU recomputed, each and both, full and LoRA.
# `bash benchmarks/gpu_session13.sh lora`: XLA's dot merger on/off for LoRA and full, and a LoRA profile.
# `bash benchmarks/gpu_session13.sh final`: the committed code against both kernels off, LoRA with the layer-norm
# kernel and cuBLAS, the peers, and Shakespeare vs nanoGPT (needs .bench/nanogpt: benchmarks/prepare_nanogpt.sh).
# `bash benchmarks/gpu_session13.sh --tiny [tune|memory|lora|final]`: the same commands at tiny shapes on this machine's CPU (a dry run).
# Calls 1 and 2 (the default mode and `tune`) ran working trees with module constants that were removed before
# commit 6d2bf64: cross_entropy.FORWARD ("round8" kept session 12's forward kernel), cross_entropy.BACKWARD
# ("pallas" or "xla" for the gradient) and layer_norm.GRAD_STAGES. Their variants now end as error rows
# (lever_ablation records the AttributeError and goes on); session 12's kernels are at commit 50cfe9a.
set -u
cd "$(dirname "$0")/.."
SESSION=13; source benchmarks/session_shapes.sh
F=kgpt2:full:pad64; L=kgpt2:lora:pad64; CE=mod:kgpt2.kernels.cross_entropy; LN=mod:kgpt2.kernels.layer_norm
if [ "${1:-}" = memory ]; then
  # call 3: fewer passes over memory -- q/k/v as three matmuls (XLA's dot merger off: bias adds in the cuBLAS
  # epilogues, no concatenation of their gradients) and GELU recomputed in the backward pass
  DM="xla:xla_gpu_dot_merger_threshold_mb=0"; GR=gelu-remat
  V="$F,$F;$DM,$F;$GR,$F;$DM;$GR,$L,$L;$DM,$L;$GR,$L;$DM;$GR,$F;again"
  timeout $((330 * T)) $PY benchmarks/lever_ablation.py $B $LSHAPE --variants "$V" \
    --budget $((300 * T)) --out "$OUT/memory.json" 2>&1 | q | tail -n 12
  exit 0
fi
if [ "${1:-}" = lora ]; then
  # call 4: XLA's dot merger off against on, LoRA and full, then where the LoRA step's time goes. Call 4 ran this
  # through `train.dot_merger`, an option that set the same XLA option with "auto" = off for LoRA; it was removed
  # after this call (LoRA: -0.5% and -0.9% here, +1.6% in call 3: not a lever).
  DM="xla:xla_gpu_dot_merger_threshold_mb=0"
  V="$L,$L;$DM,$F,$F;$DM,$L;again,$L;$DM;again"
  timeout $((240 * T)) $PY benchmarks/lever_ablation.py $B $LSHAPE --variants "$V" \
    --budget $((220 * T)) --out "$OUT/merger.json" 2>&1 | q | tail -n 8
  timeout $((100 * T)) $PY benchmarks/profile_step.py collect $B --mode lora $PSHAPE --out-dir "$OUT/profile-lora" 2>&1 | q | tail -n 30
  exit 0
fi
if [ "${1:-}" = final ]; then
  # call 5: the code as committed -- both kernels off against the defaults, LoRA with the layer-norm kernel and
  # with cuBLAS GEMMs (its profile: the MLP output projection as a Triton GEMM at ~375 TFLOPS), the Hugging Face
  # peers (own process), then the Shakespeare recipe through `kgpt2 train` against nanoGPT
  OFF="train.fused_loss=false;train.fused_layer_norm=false"; LNK=train.fused_layer_norm=true; CB=train.triton_gemm=off
  V="$F;$OFF,$F,$L;$OFF,$L,$L;$LNK,$L;$CB,$L;$LNK;$CB,$F;again,$L;again"
  timeout $((210 * T)) $PY benchmarks/lever_ablation.py $B $LSHAPE --variants "$V" \
    --budget $((190 * T)) --out "$OUT/final.json" 2>&1 | q | tail -n 11
  timeout $((130 * T)) $PY benchmarks/lever_ablation.py $B $LSHAPE --hf hf:full:compile,hf:lora:compile \
    --out "$OUT/peers.json" 2>&1 | q | tail -n 4
  [ -n "$TINY" ] && exit 0
  SHAKESPEARE_PROGRAM_S=110 timeout 240 bash benchmarks/shakespeare_vs_nanogpt.sh 2500
  exit 0
fi
if [ "${1:-}" = tune ]; then
  OFF="train.fused_loss=false;train.fused_layer_norm=false"
  V="$F;$OFF,$F,$F;$LN.GRAD_STAGES=2,$F;$LN.GRAD_STAGES=3,$F;$LN.GRAD_STEPS=8;$LN.GRAD_STAGES=2,$F;$CE.WARPS=8"
  V="$V,$F;$CE.BLOCK=4096;$CE.WARPS=8,$F;$CE.BLOCK=1024,$L;$OFF,$L,$L;$CE.WARPS=8,$F;again"
  timeout $((330 * T)) $PY benchmarks/lever_ablation.py $B $LSHAPE --variants "$V" \
    --budget $((300 * T)) --out "$OUT/tune.json" 2>&1 | q | tail -n 15
  timeout $((150 * T)) $PY benchmarks/lever_ablation.py $B $LSHAPE --hf hf:full:compile,hf:lora:compile \
    --out "$OUT/peers.json" 2>&1 | q | tail -n 4
  exit 0
fi
OLD="$CE.FORWARD=round8"; GRAD="$CE.BACKWARD=pallas"; LT="xla:xla_gpu_enable_cublaslt=true"
V="$F;$OLD,$F,$F;$GRAD,$F;$GRAD;$LT,$L;$OLD,$L,$L;$GRAD,$L;$GRAD;$LT,$F;$OLD;again,$F;$GRAD;again"
timeout $((330 * T)) $PY benchmarks/lever_ablation.py $B $LSHAPE --variants "$V" \
  --budget $((310 * T)) --out "$OUT/levers.json" 2>&1 | q | tail -n 14
timeout $((100 * T)) $PY benchmarks/profile_step.py collect $B --mode full $PSHAPE --out-dir "$OUT/profile" 2>&1 | q | tail -n 8
