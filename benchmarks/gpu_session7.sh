#!/usr/bin/env bash
# Session 7's (2026-11-30) device calls on nvidia-h200-x2, <= ~570 s each. Needs .whl and .bench carried
# (benchmarks/make_bench_data.sh, benchmarks/prepare_nanogpt.sh).
#   dp:    issue 22: where the 2-GPU data-parallel step loses ~11% against 1 GPU. A traced step on 1 and on 2 GPUs
#          (benchmarks/profile_step.py --devices: busy time per GPU, NCCL time, the part no compute overlaps), then
#          the staged trainer at 1 and 2 GPUs with 4 steps a launch (does per-step host dispatch cost the 2-GPU run?).
#   shake: issue 21: the Shakespeare recipe through `kgpt2 train` with attention dropout in cuDNN's kernel
#          (train.attention_dropout_kernel=cudnn, which sets its own command-buffer list per compile; session 6
#          measured it only under an XLA_FLAGS line) against nanoGPT on GPU 0, and the recipe as shipped on GPU 1.
#   dpvar: after dp: NCCL channel counts, NCCL's Simple protocol, 4 steps a launch (each its own process).
#   fsdp:  124M with train.mesh="data:2" (sharded weights and optimizer state) against 1 and 2 replicated GPUs.
#   recipe (nvidia-h200): the recipe as shipped after it took the cuDNN kernel ("auto") vs nanoGPT.
source benchmarks/session_prelude.sh
case "${1:-}" in
dp)
  for d in 1 2; do
    timeout 130 python benchmarks/profile_step.py collect $B --devices $d --warmup 5 --steps 10 \
      --out-dir "$OUT/dp-profile-$d" 2>&1 | q | tail -24
  done
  timeout 200 python benchmarks/data_parallel.py $B --devices 1,2 --warmup 3 --steps 12 \
    --set train.steps_per_execution=4 --log-dir /tmp/dp-spe4 --out "$OUT/dp124-spe4.json" 2>&1 | q | tail -4
  ;;
shake)
  ITERS=${SHAKESPEARE_ITERS:-2500}
  R=$OUT; mkdir -p "$R/cudnn" "$R/recipe"
  (export CUDA_VISIBLE_DEVICES=0 OUT=$R/cudnn
   KGPT2_SET="train.triton_gemm=on train.attention_dropout_kernel=cudnn" SHAKESPEARE_PROGRAM_S=170 \
     bash benchmarks/shakespeare_vs_nanogpt.sh "$ITERS" > "$R/shake-cudnn.txt" 2>&1) &
  (export CUDA_VISIBLE_DEVICES=1 OUT=$R/recipe
   SKIP_NANOGPT=1 SHAKESPEARE_PROGRAM_S=170 bash benchmarks/shakespeare_vs_nanogpt.sh "$ITERS" > "$R/shake-recipe.txt" 2>&1) &
  wait
  for f in "$R/shake-cudnn.txt" "$R/shake-recipe.txt"; do echo "== $f"; q < "$f" | tail -n 8; done
  ;;
dpvar)  # after `dp`'s profile: the 2-GPU step's compute kernels run ~5% slower while NCCL's all-reduce kernels
  # share the SMs, and ~1 ms a step is spent outside the traced step. Variants, each its own process, against a
  # 1-GPU row before and after: NCCL on fewer channels (fewer SMs taken from compute), NCCL's Simple protocol
  # instead of LL, 4 steps a launch, the latency-hiding scheduler with 4 channels.
  one() {  # $1: label, $2: devices, rest: env assignments; 30 steps timed after 5
    local label=$1 d=$2; shift 2
    local spe=1; case "$label" in *spe4*) spe=4 ;; esac
    env "$@" timeout 100 python benchmarks/data_parallel.py $B --devices $d --warmup $((5 / spe + 1)) --steps $((25 / spe)) \
      --set train.steps_per_execution=$spe --out "$OUT/dpvar-$label.json" 2>&1 | q | grep -E "replicated|failed" | tail -1 | sed "s/^/$label /"
  }
  one gpu1-before 1
  one base 2
  one spe4 2
  one ch4 2 NCCL_MAX_NCHANNELS=4
  one ch8 2 NCCL_MAX_NCHANNELS=8
  one simple 2 NCCL_PROTO=Simple
  one lhs-ch4 2 NCCL_MAX_NCHANNELS=4 XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true
  one gpu1-after 1
  ;;
fsdp)  # 124M with weights and optimizer state sharded over the 2 GPUs (train.mesh="data:2", FSDP-style): the
  # gradient all-reduce becomes a reduce-scatter + weight all-gathers and each GPU updates half the weights
  timeout 300 python benchmarks/data_parallel.py $B --devices 1,2 --mesh "data:2" --warmup 5 --steps 25 \
    --log-dir /tmp/fsdp-logs --out "$OUT/dp124-fsdp.json" 2>&1 | q | tail -5
  ;;
recipe)  # one GPU (nvidia-h200): the recipe as shipped (attention_dropout_kernel = "auto": cuDNN here) vs nanoGPT
  bash benchmarks/shakespeare_vs_nanogpt.sh "${SHAKESPEARE_ITERS:-2500}" 2>&1 | q | tail -n 6
  ;;
*) echo "usage: bash benchmarks/gpu_session7.sh dp|shake|dpvar|fsdp|recipe"; exit 2 ;;
esac
