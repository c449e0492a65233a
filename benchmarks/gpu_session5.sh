#!/usr/bin/env bash
# Session 5's (2026-11-30) device calls on nvidia-h200-x2, <= ~560 s each. Two
# single-GPU lanes run at once (each process sees one GPU; 32 host cores), then
# the 2-GPU runs. Needs .whl and .bench carried (benchmarks/make_bench_data.sh).
#   call2: lane 0 `gen` (issue 20: batch 1, streams, steps per launch, profile);
#          lane 1 the speed levers not measured in session 4 (issue 21);
#          then data parallel 124M 1 -> 2 GPUs with 4 steps per execution (issue 22).
#   call3: lane 0 triton gemm off on generation and LoRA, the HF peers (torch.compile, PEFT + torch.compile); lane 1 the
#          memory search under 15 GiB for 355M and 774M, remat off and on.
source benchmarks/session_prelude.sh
case "${1:-}" in
call2)
  lane0() { CUDA_VISIBLE_DEVICES=0 timeout 330 bash benchmarks/gpu_session.sh gen > "$OUT/lane0.txt" 2>&1; }
  lane1() {
    LEVER_VARIANTS='$L,$L;dropout-rbg,$L;lora.dropout=0.0,$L;train.fused_loss=true,$F,$F;train.remat=true,$F;ln-bf16'
    LEVER_VARIANTS="$LEVER_VARIANTS"',$F;${X}_triton_gemm=false,$F;${X}_latency_hiding_scheduler=true,$S'
    LEVER_VARIANTS="$LEVER_VARIANTS"',$S;jax:jax_threefry_gpu_kernel_lowering=true,$S;model.attention_dropout=0.0,$F;again'
    CUDA_VISIBLE_DEVICES=1 LEVER_VARIANTS=$LEVER_VARIANTS LEVERS_S=320 bash benchmarks/gpu_session.sh levers > "$OUT/lane1.txt" 2>&1
  }
  lane0 & lane1 & wait
  cat "$OUT/lane0.txt" | q | tail -45; cat "$OUT/lane1.txt" | q | tail -20
  timeout 150 python benchmarks/data_parallel.py $B --devices 1,2 --set train.steps_per_execution=4 --warmup 2 --steps 7 \
    --log-dir /tmp/dp-logs --out "$OUT/dp124-spe4.json" 2>&1 | q | tail -4
  ;;
call3)
  lane0() {  # cuBLAS for every GEMM (triton gemm off: +3.2% on call 2's full step) on generation and LoRA, then the HF peers
    export CUDA_VISIBLE_DEVICES=0
    timeout 100 python benchmarks/generate_latency.py --device gpu --peers kgpt2 --streams 64 --launch-steps 16 \
      --xla-variants notriton --profile off --out "$OUT/gen-notriton.json" > "$OUT/lane0.txt" 2>&1
    LEVER_VARIANTS='$F,$F;${X}_triton_gemm=false,$L,$L;${X}_triton_gemm=false' LEVERS_S=90 \
      bash benchmarks/gpu_session.sh levers >> "$OUT/lane0.txt" 2>&1
    PEERS_S=260 bash benchmarks/gpu_session.sh peers >> "$OUT/lane0.txt" 2>&1
  }
  lane1() { CUDA_VISIBLE_DEVICES=1 MEMORY_S=480 bash benchmarks/gpu_session.sh memory3 > "$OUT/lane1.txt" 2>&1; }
  lane0 & lane1 & wait
  cat "$OUT/lane0.txt" "$OUT/lane1.txt" | q | tail -40
  ;;
*) echo "usage: bash benchmarks/gpu_session5.sh call2|call3"; exit 2 ;;
esac
