#!/usr/bin/env bash
# One device-tool call that measures the GPU figures in docs/benchmarks.md:
# the staged trainer against the throughput benchmark (same run), and the
# Shakespeare-from-scratch config against nanoGPT's published H100 numbers.
# `causal`: the causal-attention kernel A/B (full and LoRA, HF peers in the
# same run) and a profile of the step with it (about 8 minutes).
# Needs .whl/ (wheels, see benchmarks/device_setup.sh) and .bench/ (shards,
# tokenizer, shakespeare.txt) carried; writes everything under $OUT.
source benchmarks/device_setup.sh || exit 1
nvidia-smi -L
what=${1:-all}
if [ "$what" = all ] || [ "$what" = throughput ]; then
  timeout 300 python benchmarks/train_throughput.py --shards .bench/shards --tokenizer .bench/tokenizer \
    --variants kgpt2:full:pad64,hf:full:compile --stage --out "$OUT/throughput.json" 2>&1 | grep -v "^WARNING\|^I0000" | tail -20
fi
if [ "$what" = causal ]; then  # the causal-attention kernel against keras-hub's mask, and a profile with it
  V="kgpt2:full:pad64,kgpt2:full:pad64;model.causal_attention=false,kgpt2:lora:pad64,kgpt2:lora:pad64;model.causal_attention=false,hf:full:compile,hf:lora:eager"
  timeout 420 python benchmarks/train_throughput.py --shards .bench/shards --tokenizer .bench/tokenizer \
    --variants "$V" --out "$OUT/causal.json" 2>&1 | grep -v "^WARNING\|^I0000\|^E0000\|^W0000" | tail -9
  timeout 150 python benchmarks/profile_step.py collect --shards .bench/shards --tokenizer .bench/tokenizer \
    --out-dir "$OUT/profile-full" 2>&1 | grep -v "^WARNING\|^I0000\|^E0000\|^W0000" | tail -12
fi
shakespeare() {  # $1: run name, then config overrides
  local run=$1; shift
  timeout 240 python -m kgpt2.cli -q train --config shakespeare_char --device gpu run=$run "$@" 2>&1 | tail -3
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
