"""Per-step host overhead of kgpt2's trainer on a tiny from-scratch model (CPU).

A 1-layer, 32-wide GPT-2 on tiny Shakespeare characters, batch 8 x 64: the
model's own compute is small, so the step time is mostly what the trainer
adds around `fit` (callbacks, logging, host/device syncs). Needs the char
shards of docs/pretraining.md in checkpoints/data/shakespeare_char/.

    KERAS_BACKEND=jax python benchmarks/pretrain_step_overhead.py 1 200    # steps_per_execution, steps
    KERAS_BACKEND=jax python benchmarks/pretrain_step_overhead.py 10 200
"""

import sys
import time

import kgpt2  # noqa: F401  (backend first)
from kgpt2.config import load_config
from kgpt2.pretrain import run_summary
from kgpt2.train import train

spe, steps = int(sys.argv[1]), int(sys.argv[2])
cfg = load_config("shakespeare_char", [
    "model.num_layers=1", "model.hidden_dim=32", "model.num_heads=2", "model.intermediate_dim=64",
    "model.max_sequence_length=64", "data.sequence_length=64", "train.batch_size=8", f"train.max_steps={steps}",
    "train.eval_every=0", f"train.steps_per_execution={spe}", f"run=overhead-spe{spe}-{int(time.time())}",
    "train.device=cpu"])
t0, w0 = time.process_time(), time.time()
train(cfg, verbose=0)
print(f"steps_per_execution {spe}: cpu {time.process_time() - t0:.1f} s, wall {time.time() - w0:.1f} s")
print(run_summary(cfg.run_dir))
