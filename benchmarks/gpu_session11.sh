#!/usr/bin/env bash
# Session 11 (2026-12-01): one call on nvidia-h200-x2 (<= ~520 s), carrying .whl and .bench
# (benchmarks/make_bench_data.sh). Issue 21:
#   levers (GPU 0): float8 matmuls (Keras' quantize("float8")) and train.fused_loss, full and LoRA, each against
#                   its base in one process (lever_ablation.py; earlier sessions' fused-loss rows timed the plain
#                   loss: the benchmark's model never got the option), the full base again for noise;
#   peers (GPU 1, at the same time): HF + torch.compile, HF + PEFT + torch.compile;
#   dp (both GPUs, after): the staged trainer on 1 and 2 GPUs with distributed batches laid out one step ahead,
#                   then 2 GPUs with Keras' own iterator (--keras-batches), then the look-ahead again. That lever
#                   did not pay and was removed after the call: the dp lines below ran at commit 9a7bbfe.
# `bash benchmarks/gpu_session11.sh --tiny`: the same commands at tiny shapes on this machine's CPU (a dry run).
set -u
cd "$(dirname "$0")/.."
if [ "${1:-}" = --tiny ]; then
  export OUT=${OUT:-$PWD/.tmp/gpu-tiny11} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} KERAS_BACKEND=jax PYTHONUNBUFFERED=1
  export XLA_FLAGS=--xla_force_host_platform_device_count=2
  q() { grep --line-buffered -v "^WARNING\|^I0000\|^E0000\|^W0000"; }
  B="--shards .bench/shards --tokenizer .bench/tokenizer"
  PY=.venv/bin/python
  LSHAPE="--tiny --batch 2 --seq 64 --warmup 2 --steps 3"
  DSHAPE="--size tiny --seq 64 --per-device-batch 2 --warmup 2 --steps 3 --device cpu"
  T=3
else
  [ -n "${KGPT2_DEVICE_READY:-}" ] || source benchmarks/session_prelude.sh
  PY=python
  LSHAPE="--batch 16 --seq 1024 --warmup 5 --steps 30"
  DSHAPE="--warmup 5 --steps 25"
  T=1
fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
V="kgpt2:full:pad64,kgpt2:full:pad64;float8,kgpt2:full:pad64;train.fused_loss=true,kgpt2:lora:pad64"
V="$V,kgpt2:lora:pad64;float8,kgpt2:lora:pad64;train.fused_loss=true,kgpt2:full:pad64;again"
(export CUDA_VISIBLE_DEVICES=0
 timeout $((240 * T)) $PY benchmarks/lever_ablation.py $B $LSHAPE --variants "$V" --budget $((220 * T)) \
   --out "$OUT/levers.json" > "$OUT/levers.log" 2>&1) &
(export CUDA_VISIBLE_DEVICES=1
 timeout $((240 * T)) $PY benchmarks/lever_ablation.py $B $LSHAPE --hf hf:full:compile,hf:lora:compile \
   --out "$OUT/peers.json" > "$OUT/peers.log" 2>&1) &
wait
q < "$OUT/levers.log" | tail -n 10
q < "$OUT/peers.log" | tail -n 4
timeout $((130 * T)) $PY benchmarks/data_parallel.py $B $DSHAPE --devices 1,2 --out "$OUT/dp.json" 2>&1 | q | tail -n 4
# at 9a7bbfe only (git checkout 9a7bbfe -- kgpt2 benchmarks): --keras-batches is gone with the lever
timeout $((70 * T)) $PY benchmarks/data_parallel.py $B $DSHAPE --devices 2 --keras-batches \
  --out "$OUT/dp-keras.json" 2>&1 | q | tail -n 2
timeout $((70 * T)) $PY benchmarks/data_parallel.py $B $DSHAPE --devices 2 --out "$OUT/dp-again.json" 2>&1 | q | tail -n 2
