"""Instruction data packed vs one example per window, through kgpt2's training path: padding, step time, trained tokens/s.

Alpaca (alpaca_5000.json) is prepared by `kgpt2.data.shards.prepare` with
GPT-2's tokenizer (Alpaca template, loss mask on the responses). Each variant
is what `kgpt2 train --config alpaca` runs with `data.windows` = "example"
(one example per window, padded; the plain GPT2CausalLM with kgpt2's causal
attention kernel) or "packed_examples" (several examples per window, each
attending only to itself: kgpt2.model.packed_attention's masked attention,
positions restarting): the recipe's LoRA (or `full`), `article_batches` fed
by grain, `build_causal_lm` (vocabulary padded to 64), `make_optimizer`,
`compile_lm`, the device's precision (bf16 on a GPU, float32 on a CPU), on a
random GPT-2 124M (`--tiny`: 2 layers x 64, for a CPU dry run). One `fit`
over warm-up + timed steps, timed by the staged trainer's own step log
(`kgpt2.training.run_logs.steady_tokens_per_s`, device-synchronised). "Response
tokens/s" counts the trained targets (weight 1), the number both variants
are compared on: they see the same examples. `max_logit_diff`: the packed
examples of one window against each alone, in the run's precision.

    # GPU, GPT-2 124M in bf16 (after `source benchmarks/device_setup.sh`):
    python benchmarks/packing_throughput.py --alpaca .bench/alpaca_5000.json --tokenizer .bench/tokenizer \
        --modes lora,full --out "$OUT/packing.json"
    # CPU dry run (checks every path at a tiny shape; not a measurement):
    KERAS_BACKEND=jax python benchmarks/packing_throughput.py --tiny
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

SHAPES = {"124M": (12, 12, 768), "tiny": (2, 2, 64)}  # layers, heads, hidden


class Cycle:
    """`n` batches of a batch source, wrapping around (a fixed step count over one epoch's batches)."""

    def __init__(self, source, n: int):
        self.source, self.n = source, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.source[i % len(self.source)]


def prepare_shards(a, work: Path) -> tuple[Path, Path]:
    """GPT-2's tokenizer (a saved kgpt2 tokenizer, or encoder.json + vocab.bpe) and Alpaca shards under `work`."""
    from kgpt2.data.shards import prepare
    from kgpt2.model.tokenizer import Tokenizer

    src = Path(a.tokenizer)
    tok = Tokenizer.from_files(src / "encoder.json", src / "vocab.bpe") if (src / "encoder.json").is_file() \
        else Tokenizer.from_dir(src)
    tok_dir = tok.save(work / "tokenizer")
    prepare(str(a.alpaca), work / "shards", tok, fmt="alpaca", splits="train", progress=False)
    return tok_dir, work / "shards"


def config(a, mode: str, windows: str, tok_dir: Path, shards: Path):
    from kgpt2.config import load_config

    layers, heads, hidden = SHAPES["tiny" if a.tiny else "124M"]
    return load_config("alpaca", [  # the recipe's LoRA, optimizer and loss mask, this shape and batch
        "model.preset=scratch", f"model.tokenizer={tok_dir}", f"data.shards={shards}",
        f"model.num_layers={layers}", f"model.num_heads={heads}", f"model.hidden_dim={hidden}",
        f"model.intermediate_dim={4 * hidden}", f"model.max_sequence_length={a.seq}",
        f"data.sequence_length={a.seq}", f"data.windows={windows}", f"train.batch_size={a.batch}",
        "train.gradient_accumulation_steps=1", f"lora.enabled={'true' if mode == 'lora' else 'false'}"])


def timed_fit(model, schedule, batches, positions_per_step: int, warmup: int) -> tuple[float, float]:
    """(positions/s after the warm-up steps, seconds to the first step) of one `fit` with the trainer's step log."""
    from kgpt2.data.batches import to_dataset
    from kgpt2.training.run_logs import StepLog, steady_tokens_per_s

    folder = tempfile.mkdtemp(prefix="kgpt2-packing-")
    log = StepLog(f"{folder}/steps.csv", tensorboard_dir=f"{folder}/tb")
    log._tensorboard = False  # the benchmark times training, not TensorBoard writes
    t0 = time.time()
    model.fit(to_dataset(batches), epochs=1, verbose=0, shuffle=False,
              callbacks=[log.callback(0, schedule, 0, positions_per_step)])
    with open(f"{folder}/steps.csv") as f:
        rows = list(csv.DictReader(f))
    return steady_tokens_per_s(rows, positions_per_step, warmup), min(float(r["time"]) for r in rows) - t0


def logit_gap(causal_lm, batch) -> float:
    """Largest |logit| difference between the examples of one packed window and each of them alone."""
    from keras import ops

    from kgpt2.model.packed_attention import packed_logits

    x = batch[0]
    row = int(np.argmax(x["segment_ids"].max(axis=1)))
    one = {k: v[row:row + 1] for k, v in x.items()}
    packed = ops.convert_to_numpy(ops.cast(packed_logits(causal_lm, **one), "float32"))[0]
    gap, T = 0.0, x["token_ids"].shape[1]
    for seg in range(1, int(one["segment_ids"].max()) + 1):
        at = np.flatnonzero(one["segment_ids"][0] == seg)
        ids = np.zeros((1, T), "int32")
        ids[0, :len(at)] = one["token_ids"][0, at]
        alone = causal_lm.predict({"token_ids": ids, "padding_mask": np.arange(T)[None] < len(at)}, verbose=0)
        gap = max(gap, float(np.max(np.abs(packed[at] - np.asarray(alone, "float32")[0, :len(at)]))))
    return gap


def run_variant(a, mode: str, windows: str, tok_dir: Path, shards: Path) -> dict:
    import keras

    from kgpt2.data.batches import article_batches
    from kgpt2.data.shards import ShardSet
    from kgpt2.model.models import build_causal_lm
    from kgpt2.model.packed_attention import for_windows
    from kgpt2.training.devices import resolve_device
    from kgpt2.training.metrics import compile_lm
    from kgpt2.training.optimizer import make_optimizer

    cfg = config(a, mode, windows, tok_dir, shards)
    device = resolve_device("auto")
    policy = device.policy(cfg.train.precision)
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    split = ShardSet(shards).split("train")
    source = article_batches(split, 0, split.num_articles, windows=windows, loss_on="response",
                             sequence_length=a.seq, batch_size=a.batch, seed=0, shuffle=True)
    steps = Cycle(source, a.warmup + a.steps)
    trained = np.mean([steps[i][2].sum() for i in range(a.warmup, len(steps))])  # weight-1 targets per timed step
    with device.scope():
        model = build_causal_lm(cfg)
        fit_model = for_windows(model, windows)
        optimizer, schedule = make_optimizer(cfg, len(steps))
        compile_lm(fit_model, optimizer, token_loss=False)
        positions_s, compile_s = timed_fit(fit_model, schedule, steps, a.batch * a.seq, a.warmup)
        gap = logit_gap(model, source[0]) if windows == "packed_examples" else 0.0
    step_s = a.batch * a.seq / positions_s
    return {"mode": mode, "windows": windows, "windows_per_epoch": source.num_windows,
            "padding": round(source.padding_fraction(), 4), "step_ms": round(1e3 * step_s, 2),
            "positions_per_s": round(positions_s), "response_tokens_per_s": round(trained / step_s),
            "compile_s": round(compile_s, 1), "max_logit_diff": gap, "precision": str(policy),
            "device": device.description, "shape": "tiny" if a.tiny else "124M", "batch": a.batch, "seq": a.seq}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alpaca", default=str(SHARED / "alpaca" / "alpaca_5000.json"), help="Alpaca JSON records")
    p.add_argument("--tokenizer", default=str(SHARED / "gpt2-tokenizer"),
                   help="GPT-2's tokenizer: a saved kgpt2 tokenizer folder or encoder.json + vocab.bpe")
    p.add_argument("--modes", default="lora", help="comma list of lora (the alpaca recipe's adapters), full")
    p.add_argument("--seq", type=int, help="window length (default 256; --tiny 128)")
    p.add_argument("--batch", type=int, help="windows per step (default 16; --tiny 4)")
    p.add_argument("--warmup", type=int, help="untimed first steps (default 5; --tiny 2)")
    p.add_argument("--steps", type=int, help="timed steps (default 30; --tiny 4)")
    p.add_argument("--tiny", action="store_true", help="2 layers x 64 and a short run: a CPU dry run")
    p.add_argument("--out", help="write the JSON report here")
    a = p.parse_args(argv)
    for key, full, tiny in (("seq", 256, 128), ("batch", 16, 4), ("warmup", 5, 2), ("steps", 30, 4)):
        if getattr(a, key) is None:
            setattr(a, key, tiny if a.tiny else full)
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kgpt2-packing-") as work:
        tok_dir, shards = prepare_shards(a, Path(work))
        results = [run_variant(a, mode, windows, tok_dir, shards)
                   for mode in a.modes.split(",") for windows in ("example", "packed_examples")]
    print(f"\n| mode | windows | windows / epoch | padding | step ms | positions/s | response tokens/s | vs example |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        base = next(b for b in results if b["mode"] == r["mode"] and b["windows"] == "example")
        print(f"| {r['mode']} | {r['windows']} | {r['windows_per_epoch']:,} | {r['padding']:.1%} | {r['step_ms']} | "
              f"{r['positions_per_s']:,} | {r['response_tokens_per_s']:,} | "
              f"{r['response_tokens_per_s'] / base['response_tokens_per_s']:.2f}x |")
    report = {"benchmark": "packing_throughput", "date": time.strftime("%Y-%m-%d %H:%M"), "args": vars(a),
              "results": results}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
