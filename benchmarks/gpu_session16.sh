#!/usr/bin/env bash
# Session 16 (2026-12-02): calls on nvidia-h200 carrying .whl and .bench (benchmarks/make_bench_data.sh). Issue 21,
# round 12: XLA's own GEMM choices, as per-variant compile options (lever_ablation.py's `xla:`), in one process.
# `bash benchmarks/gpu_session16.sh xla`: the full step with cuDNN GEMM fusions (`xla_gpu_cudnn_gemm_fusion_level`
#            2 and 3; with `train.triton_gemm=on`, as we expected XLA to form GEMM fusions only with Triton GEMMs on,
#            and once without), LoRA with cuDNN fusions and with Triton's exhaustive tile search; each base measured
#            twice for the noise; 100 timed steps a variant. (`--tiny` was not tried for this script.)
# `bash benchmarks/gpu_session16.sh alone`: call 2: the same levers, each variant alone in its own process (call 2 ran
#            with a counter bumped inside the pipeline's subshell, so every variant wrote alone-1.json: its rows are
#            the stdout lines; Triton's exhaustive tile search passed the 150 s limit without a row).
# `bash benchmarks/gpu_session16.sh repeat`: call 3: LoRA with and without cuDNN GEMM fusions, alternated, alone.
set -u
cd "$(dirname "$0")/.."
SESSION=16; source benchmarks/session_shapes.sh
F=kgpt2:full:pad64; L=kgpt2:lora:pad64; X=xla:xla_gpu
LONG="${LSHAPE/--warmup 5 --steps 30/--warmup 10 --steps 100}"
if [ "${1:-}" = xla ]; then
  $PY -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__)"
  V="$F,$F;train.triton_gemm=on;${X}_cudnn_gemm_fusion_level=2,$F;train.triton_gemm=on;${X}_cudnn_gemm_fusion_level=3"
  V="$V,$F;${X}_cudnn_gemm_fusion_level=2,$L,$L;${X}_cudnn_gemm_fusion_level=2,$F;again,$L;again"
  V="$V,$L;${X}_exhaustive_tiling_search=true"
  timeout $((560 * T)) $PY benchmarks/lever_ablation.py $B $LONG --budget $((500 * T)) --variants "$V" \
    --out "$OUT/xla.json" 2>&1 | q | tail -n 12
  exit 0
fi
if [ "${1:-}" = alone ]; then
  # XLA keeps its autotuning results per process, so a lever measured after its base may reuse the base's choices;
  # here each variant is the first (and only) one of its process.
  i=0; for v in "$L;${X}_exhaustive_tiling_search=true" "$L;${X}_cudnn_gemm_fusion_level=2" "$L" \
           "$F;train.triton_gemm=on;${X}_cudnn_gemm_fusion_level=2" "$F"; do
    i=$((i + 1)); timeout $((150 * T)) $PY benchmarks/lever_ablation.py $B $LONG --variants "$v" --out "$OUT/alone-$i.json" \
      2>&1 | q | tail -n 1
  done
  exit 0
fi
if [ "${1:-}" = repeat ]; then
  # Call 3: LoRA with and without cuDNN GEMM fusions, each alone in its process, alternated three times.
  for round in 1 2 3; do for v in "$L" "$L;${X}_cudnn_gemm_fusion_level=2"; do
    timeout $((120 * T)) $PY benchmarks/lever_ablation.py $B $LONG --variants "$v" --out "$OUT/repeat-$round-$([ "$v" = "$L" ] && echo base || echo cudnn).json" \
      2>&1 | q | tail -n 1
  done; done
  exit 0
fi
echo "usage: bash benchmarks/gpu_session16.sh [--tiny] xla|alone|repeat" >&2; exit 2
