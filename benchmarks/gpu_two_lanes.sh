#!/usr/bin/env bash
# The last GPU call of session 4 (2026-11-30) on nvidia-h200-x2, <= ~575 s:
# single-GPU benchmarks two at a time (one per GPU, each process sees one
# GPU; 32 host cores, so the lanes do not starve each other's input), then
# the 2-GPU sharded figures.
#   lane 0: Shakespeare char, nanoGPT vs kgpt2 (2,500 iterations of the
#           5,000-iteration curve), then packed vs one-example windows (LoRA);
#   lane 1: the speed levers (benchmarks/lever_ablation.py), then the
#           memory search under a 15 GiB cap;
#   both:   GPT-2 large (774M) and XL (1.5B) with sharded weights (data:2).
# Needs .whl and .bench carried (benchmarks/make_bench_data.sh, prepare_nanogpt.sh).
source benchmarks/session_prelude.sh
lane0() {
  export CUDA_VISIBLE_DEVICES=0
  SHAKESPEARE_PROGRAM_S=80 bash benchmarks/shakespeare_vs_nanogpt.sh 2500 > "$OUT/lane0.txt" 2>&1
  timeout 100 python benchmarks/packing_throughput.py --alpaca .bench/alpaca_5000.json --tokenizer .bench/tokenizer \
    --modes lora --steps 20 --out "$OUT/packing.json" 2>&1 | q | tail -8 >> "$OUT/lane0.txt"
}
lane1() {
  export CUDA_VISIBLE_DEVICES=1
  LEVERS_S=160 bash benchmarks/gpu_session.sh levers > "$OUT/lane1.txt" 2>&1
  MEMORY_S=100 bash benchmarks/gpu_session.sh memory3 >> "$OUT/lane1.txt" 2>&1
}
lane0 & lane1 & wait
cat "$OUT/lane0.txt" "$OUT/lane1.txt" | q | tail -40
timeout 140 python benchmarks/data_parallel.py $B --size 774M --per-device-batch 8 --devices "" --mesh "data:2" \
  --warmup 3 --steps 8 --out "$OUT/dp774-sharded.json" 2>&1 | q | tail -3
timeout 160 python benchmarks/data_parallel.py $B --size 1.5B --per-device-batch 4 --devices "" --mesh "data:2" \
  --warmup 3 --steps 6 --out "$OUT/dp1558-sharded.json" 2>&1 | q | tail -3
