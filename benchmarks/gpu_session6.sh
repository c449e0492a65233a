#!/usr/bin/env bash
# Session 6's (2026-11-30) device calls on nvidia-h200-x2, <= ~570 s each. Needs .whl and .bench carried
# (benchmarks/make_bench_data.sh).
#   memdp: the memory rows session 5 left undetermined (issue 21: the largest batch under a 15 GiB cap), three
#          searches a GPU so the card cannot run out before the cap (session 5 ran 8 on one card); then data
#          parallel 124M 1 -> 2 GPUs with the latency-hiding scheduler and two all-reduce combine thresholds
#          (issue 22: can the gradient all-reduce overlap the backward pass better?).
source benchmarks/session_prelude.sh
MS="--seq 1024 --cap-gb 15 --max-probes 4 --jobs 3"
LHS="--xla_gpu_enable_latency_hiding_scheduler=true"
case "${1:-}" in
memdp)
  mem() {  # $1: GPU, $2: specs
    CUDA_VISIBLE_DEVICES=$1 timeout ${MEMORY_S:-290} python benchmarks/train_throughput.py $B $MS --memory-search \
      --search-timeout $((${MEMORY_S:-290} - 10)) --search-specs "$2" --out "$OUT/memory-gpu$1.json" > "$OUT/memory-gpu$1.txt" 2>&1
  }
  mem 0 "355M:full:plain,355M:lora:plain,774M:lora:plain" & mem 1 "355M:full:remat,124M:full:remat,774M:lora:remat" & wait
  cat "$OUT"/memory-gpu*.txt | q | grep -v '^{"probe' | tail -16
  # JAX's automatic PGLE (JAX_ENABLE_PGLE=yes) could not run here: it profiles every jitted function's first
  # runs, and the run logger's learning-rate function runs in a thread beside the train step ("Another profiling
  # session active"). Instead, the all-reduce combine threshold: smaller combined all-reduces can start while the
  # backward pass still runs, bigger ones launch less. The 1-GPU row is shared (the flag has no all-reduce to act on).
  for cb in 8388608 134217728; do
    d=$([ $cb = 8388608 ] && echo 1,2 || echo 2)
    XLA_FLAGS="$LHS --xla_gpu_all_reduce_combine_threshold_bytes=$cb" timeout ${DP_S:-140} python benchmarks/data_parallel.py $B \
      --devices $d --warmup 5 --steps 25 --log-dir /tmp/dp-logs-$cb --out "$OUT/dp124-lhs-combine$cb.json" 2>&1 | q | tail -4
  done
  ;;
cudnn)  # one GPU: attention dropout in cuDNN's kernel (train.attention_dropout_kernel=cudnn) at the Shakespeare
  # shape, against Triton GEMMs on (the other shake6 pick), twice each in one process; then nanoGPT vs the recipe
  # with both over 2,500 iterations (the validation loss says whether cuDNN's dropout trains as Keras' does).
  V="shakespeare_triton,shakespeare_triton;train.attention_dropout_kernel=cudnn"
  V="$V,shakespeare_triton;train.attention_dropout_kernel=cudnn;train.dropout_rng=rbg"
  V="$V,shakespeare_triton;again,shakespeare_triton;train.attention_dropout_kernel=cudnn;again"
  timeout 175 python benchmarks/lever_ablation.py $B --char-data .bench/shakespeare_char --batch 16 --seq 1024 \
    --warmup 5 --steps 30 --shakespeare-warmup 5 --shakespeare-steps 30 --variants "$V" --budget 160 \
    --out "$OUT/cudnn-levers.json" 2>&1 | q | tail -7
  KGPT2_SET="train.triton_gemm=on train.attention_dropout_kernel=cudnn" SHAKESPEARE_PROGRAM_S=150 \
    bash benchmarks/shakespeare_vs_nanogpt.sh 2500 2>&1 | q | tail -6
  ;;
cudnn-nocmdbuf)  # `cudnn` crashed in XLA (cuda_dnn.cc "Check failed: local_device_ordinal.has_value()", as the
  # facts script's CUDA-graph probe did): the same with XLA's command buffers (CUDA graphs) off for both rows.
  export XLA_FLAGS="--xla_gpu_enable_command_buffer="
  timeout 100 python benchmarks/lever_ablation.py $B --char-data .bench/shakespeare_char --batch 16 --seq 1024 \
    --warmup 5 --steps 30 --shakespeare-warmup 5 --shakespeare-steps 30 --budget 90 --out "$OUT/cudnn-nocmdbuf-levers.json" \
    --variants "shakespeare_triton,shakespeare_triton;train.attention_dropout_kernel=cudnn" 2>&1 | q | tail -3
  SKIP_NANOGPT=1 KGPT2_SET="train.triton_gemm=on train.attention_dropout_kernel=cudnn" SHAKESPEARE_PROGRAM_S=110 \
    bash benchmarks/shakespeare_vs_nanogpt.sh 2500 2>&1 | q | tail -4
  ;;
cudnn-cmdbuf)  # command buffers for everything but cuDNN's calls (what train.attention_dropout_kernel=cudnn now
  # sets on its train step's compile): was run by hand in the session as this XLA_FLAGS line, one process
  export XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,WHILE,CONDITIONAL"
  timeout 110 python benchmarks/lever_ablation.py $B --char-data .bench/shakespeare_char --batch 16 --seq 1024 \
    --warmup 5 --steps 30 --shakespeare-warmup 5 --shakespeare-steps 30 --budget 95 --out "$OUT/cudnn-nocudnncmd-levers.json" \
    --variants "shakespeare_triton,shakespeare_triton;train.attention_dropout_kernel=cudnn" 2>&1 | q | tail -3
  ;;
*) echo "usage: bash benchmarks/gpu_session6.sh memdp|cudnn|cudnn-nocmdbuf|cudnn-cmdbuf"; exit 2 ;;
esac
