#!/usr/bin/env bash
# Before a device call with the Shakespeare comparison (benchmarks/shakespeare_vs_nanogpt.sh), on this machine:
# - .bench/nanogpt/: nanoGPT's model.py, train.py, configurator.py, config/train_shakespeare_char.py and
#   data/shakespeare_char/prepare.py, unchanged, from a nanoGPT git directory (the `fetch` tool's bare
#   mirror of github:karpathy/nanoGPT), and its train.bin / val.bin / meta.pkl made here by its own
#   prepare.py (which downloads nothing when input.txt is already beside it);
# - .bench/shakespeare_char/: kgpt2's character tokenizer and shards of the same text (the recipe's inputs).
# nanoGPT's code is not part of this repository: it lives under the ignored .bench/ only.
#   bash benchmarks/prepare_nanogpt.sh /work/.mirror/karpathy+nanoGPT/repo [input.txt]
set -euo pipefail
GIT_DIR=${1:?usage: prepare_nanogpt.sh NANOGPT_GIT_DIR [input.txt]}
TEXT=${2:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data/shakespeare/input.txt}
PY=${PY:-$( [ -x .venv/bin/python ] && echo $PWD/.venv/bin/python || echo /work/main/.venv/bin/python )}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
N=.bench/nanogpt
rm -rf $N.tmp && mkdir -p $N.tmp/config $N.tmp/data/shakespeare_char
for f in model.py train.py configurator.py config/train_shakespeare_char.py data/shakespeare_char/prepare.py; do
  git --git-dir="$GIT_DIR" show "HEAD:$f" > "$N.tmp/$f"
done
git --git-dir="$GIT_DIR" rev-parse HEAD > $N.tmp/COMMIT
cp "$TEXT" $N.tmp/data/shakespeare_char/input.txt
# prepare.py imports requests only to download input.txt, which is already there.
(cd $N.tmp/data/shakespeare_char && "$PY" -c "import runpy, sys, types; sys.modules.setdefault('requests', types.ModuleType('requests')); runpy.run_path('prepare.py', run_name='__main__')")
rm -rf $N && mv $N.tmp $N
S=.bench/shakespeare_char
rm -rf $S.tmp
"$PY" -m kgpt2.cli -q tokenizer train --char --source "$TEXT" --out $S.tmp/tokenizer
"$PY" -m kgpt2.cli -q prepare --source "$TEXT" --splits tail:0.1 --tokenizer $S.tmp/tokenizer --out $S.tmp/shards
rm -rf $S && mv $S.tmp $S
du -sh $N $S
