#!/usr/bin/env bash
# One device-tool call that measures the GPU figures in docs/benchmarks.md:
# the staged trainer against the throughput benchmark (same run), and the
# Shakespeare-from-scratch config against nanoGPT's published H100 numbers.
# Needs .whl/ (wheels, see benchmarks/device_setup.sh) and .bench/ (shards,
# tokenizer, shakespeare.txt) carried; writes everything under $OUT.
source benchmarks/device_setup.sh || exit 1
nvidia-smi -L
what=${1:-all}
if [ "$what" = all ] || [ "$what" = throughput ]; then
  timeout 300 python benchmarks/train_throughput.py --shards .bench/shards --tokenizer .bench/tokenizer \
    --variants kgpt2:full:pad64,hf:full:compile --stage --out "$OUT/throughput.json" 2>&1 | grep -v "^WARNING\|^I0000" | tail -20
fi
shakespeare() {  # $1: run name, then config overrides
  local run=$1; shift
  timeout 240 python -m kgpt2.cli -q train --config configs/shakespeare_char.toml --device gpu run=$run "$@" 2>&1 | tail -3
  python -m kgpt2.cli pretrain summary --run checkpoints/$run | tee "$OUT/$run-summary.txt"
  cp checkpoints/$run/eval_loss.png "$OUT/$run-eval_loss.png"
  cp checkpoints/$run/logs/evals.csv "$OUT/$run-evals.csv"
}
if [ "$what" = all ] || [ "$what" = shakespeare ]; then
  D=checkpoints/data/shakespeare_char
  python -m kgpt2.cli -q tokenizer train --char --source .bench/shakespeare.txt --out $D/tokenizer
  python -m kgpt2.cli -q prepare --source .bench/shakespeare.txt --splits tail:0.1 --tokenizer $D/tokenizer --out $D/shards
  shakespeare shakespeare-char
  [ "$what" = all ] && shakespeare shakespeare-char-attn0 model.attention_dropout=0.0
fi
