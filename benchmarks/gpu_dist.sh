#!/usr/bin/env bash
# Issue 22's figures in one device call on nvidia-h200-x2 (<= ~6 minutes):
# data parallel 1 -> 2 GPUs for the 124M shape with XLA's latency-hiding
# scheduler (overlaps the gradient all-reduce with the backward pass; the
# same pair without it is the "plain" row), then GPT-2 large (774M) and XL
# (1.5B) full fine-tuning on 2 GPUs, replicated (data parallel) against
# sharded weights (train.mesh="data:2", FSDP-style). Each run's stderr is kept
# in $OUT/logs.tgz. Needs .whl/ and .bench/ carried (benchmarks/device_setup.sh).
#   bash benchmarks/gpu_dist.sh            # on the GPU machine
#   bash benchmarks/gpu_dist.sh --tiny     # CPU dry run on 2 virtual devices
if [ "${1:-}" = --tiny ]; then
  export OUT=${OUT:-$PWD/.tmp/gpu-dist-tiny} PYTHONPATH=$PWD KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2
  PY=${PY:-/work/main/.venv/bin/python}; mkdir -p "$OUT"
  S124="--size tiny --seq 64 --per-device-batch 4 --device cpu"; SBIG="$S124"; SXL="$S124"; LHS=""
else
  source benchmarks/device_setup.sh || exit 1
  PY=python; S124=""; SBIG="--size 774M --per-device-batch 8"; SXL="--size 1.5B --per-device-batch 4"
  LHS="--xla_gpu_enable_latency_hiding_scheduler=true"
fi
B="--shards .bench/shards --tokenizer .bench/tokenizer"; L=/tmp/kgpt2-dist-logs
q() { grep --line-buffered -v "^WARNING\|^I0000\|^E0000\|^W0000"; }
dp() {  # $1: name, $2: seconds, then data_parallel.py's arguments
  local name=$1 t=$2; shift 2
  timeout "$t" $PY benchmarks/data_parallel.py $B --log-dir "$L/$name" --out "$OUT/$name.json" "$@" 2>&1 | q | tee "$OUT/$name.txt"
}
PARTS=${PARTS:-124 774 1558}  # a subset when one call cannot hold all three
# T774/T1558: their timeouts; D774="" leaves out the replicated 774M row (measured in session 4).
[[ " $PARTS " == *" 124 "* ]] && XLA_FLAGS="$XLA_FLAGS $LHS" dp dp124-lhs 130 $S124 --devices 1,2 --warmup 5 --steps 25
[[ " $PARTS " == *" 774 "* ]] && dp dp774 ${T774:-250} $SBIG --devices "${D774-2}" --mesh "data:2" --warmup 3 --steps 8
[[ " $PARTS " == *" 1558 "* ]] && dp dp1558 ${T1558:-170} $SXL --devices "" --mesh "data:2" --warmup 3 --steps 6
(cd "$(dirname $L)" && tar czf "$OUT/logs.tgz" "$(basename $L)")
