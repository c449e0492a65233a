#!/usr/bin/env bash
# Builds .bench/ (what benchmarks/gpu_session.sh reads on the GPU machine) from
# the shared data: GPT-2's tokenizer, SumPubMed shards written by `kgpt2
# prepare`, Shakespeare's text and Alpaca's alpaca_5000.json. Run it from the repository root before the
# device call, then carry .whl and .bench:
#   bash benchmarks/make_bench_data.sh [DATA_DIR]     # default ../shared/data
set -euo pipefail
DATA=${1:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo /work/main/.venv/bin/python )}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
[ -d "$DATA/gpt2-tokenizer" ] || { echo "no shared data at $DATA" >&2; exit 2; }
rm -rf .bench.tmp && mkdir -p .bench.tmp
"$PY" -c "import sys; from kgpt2.model.tokenizer import Tokenizer; Tokenizer.from_files(sys.argv[1] + '/encoder.json', sys.argv[1] + '/vocab.bpe').save('.bench.tmp/tokenizer')" "$DATA/gpt2-tokenizer"
"$PY" -m kgpt2.cli -q prepare --source "$DATA/pubmed/sumpubmed_1000" --format sumpubmed \
  --tokenizer .bench.tmp/tokenizer --out .bench.tmp/shards
cp "$DATA/shakespeare/input.txt" .bench.tmp/shakespeare.txt
cp "$DATA/alpaca/alpaca_5000.json" .bench.tmp/alpaca_5000.json  # benchmarks/packing_throughput.py
rm -rf .bench && mv .bench.tmp .bench  # a half-built .bench never replaces a whole one
du -sh .bench/*
