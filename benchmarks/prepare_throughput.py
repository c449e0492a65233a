"""`kgpt2 prepare` vs Hugging Face `datasets` `.map(fast GPT-2 tokenizer)`: tokens/s and peak RSS.

Input: the real PubMed texts in ../shared/data (MemSum 300 + SumPubMed 1,000
articles, abstract + body) written once to one JSON Lines file
({"id", "text"}), then read `--repeat` times by each implementation (kgpt2
streams the same file N times; `datasets` gets the same file N times in
`data_files`), so both tokenise the same >= 200 M tokens. Each runs in its own
subprocess, so its peak RSS (ru_maxrss of itself + its children) is its own.

    .venv/bin/python benchmarks/prepare_throughput.py              # 28 repeats, ~204 M tokens
    .venv/bin/python benchmarks/prepare_throughput.py --repeat 1 --limit 40   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TOKENIZER = SHARED / "gpt2-tokenizer"


def write_input(path: Path, limit: int | None) -> int:
    """The 1,300 PubMed articles as {"id", "text"} lines; returns the count."""
    from kgpt2.data.sources import open_source

    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for source in (SHARED / "pubmed" / "memsum_pubmed_300", SHARED / "pubmed" / "sumpubmed_1000"):
            for doc in open_source(source, contents="both"):
                if limit is not None and n >= limit:
                    return n
                f.write(json.dumps({"id": doc.id, "text": doc.text}, ensure_ascii=False) + "\n")
                n += 1
    return n


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024  # KiB on Linux


def run_kgpt2(data: Path, repeat: int, workdir: Path, threads: int | None) -> dict:
    from kgpt2.data.shards import prepare
    from kgpt2.data.sources import Document, Source, open_source
    from kgpt2.model.tokenizer import Tokenizer

    class Repeated(Source):
        """The same file streamed `repeat` times (never materialised)."""

        def __init__(self, inner: Source, times: int):
            super().__init__(inner.path, inner.format, inner.contents, inner.text_column)
            self.inner, self.times = inner, times

        def __iter__(self):
            for r in range(self.times):
                for doc in self.inner:
                    yield Document(f"{doc.id}#{r}", doc.text)
                self.stats = self.inner.stats

    tokenizer = Tokenizer.from_dir(TOKENIZER)
    start = time.perf_counter()
    source = Repeated(open_source(data, fmt="papers", contents="body"), repeat)
    m = prepare(source, workdir / "kgpt2-shards", tokenizer, splits="hash", progress=False, threads=threads)
    seconds = time.perf_counter() - start
    articles = sum(s["num_articles"] for s in m["splits"].values())
    tokens = sum(s["num_tokens"] for s in m["splits"].values()) - articles  # without end-of-text
    return {"implementation": "kgpt2 prepare", "engine": tokenizer.engine, "articles": articles,
            "tokens": tokens, "seconds": seconds}


def run_datasets(data: Path, repeat: int, workdir: Path, num_proc: int | None) -> dict:
    import datasets
    from transformers import GPT2TokenizerFast

    datasets.disable_progress_bars()
    tokenizer = GPT2TokenizerFast(vocab=str(TOKENIZER / "encoder.json"), merges=str(TOKENIZER / "vocab.bpe"),
                                  model_max_length=10**9)
    start = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=[str(data)] * repeat, split="train",
                               cache_dir=str(workdir / "hf-cache"))
    ds = ds.map(lambda batch: {"input_ids": tokenizer(batch["text"])["input_ids"]}, batched=True,
                remove_columns=ds.column_names, num_proc=num_proc)
    seconds = time.perf_counter() - start
    import pyarrow.compute as pc

    tokens = sum(pc.sum(pc.list_value_length(chunk)).as_py() or 0
                 for chunk in ds.data.column("input_ids").chunks)
    name = "datasets.map" + (f" (num_proc={num_proc})" if num_proc else "")
    return {"implementation": name, "engine": "tokenizers (GPT2TokenizerFast)", "articles": len(ds),
            "tokens": tokens, "seconds": seconds}


def child(args) -> None:
    workdir = Path(args.workdir)
    if args.child == "kgpt2":
        row = run_kgpt2(Path(args.data), args.repeat, workdir, args.threads)
    else:
        row = run_datasets(Path(args.data), args.repeat, workdir, args.num_proc)
    row["tokens_per_s"] = row["tokens"] / row["seconds"]
    row["peak_rss_mb"] = peak_rss_mb()
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    row["cpu_seconds"] = sum(u.ru_utime + u.ru_stime for u in usage)  # fair on a shared machine
    print(json.dumps(row))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=28, help="times each implementation reads the input")
    p.add_argument("--limit", type=int, default=None, help="use only the first N articles (smoke runs)")
    p.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--threads", type=int, default=None, help="kgpt2 encoding threads")
    p.add_argument("--num-proc", type=int, default=None, help="also run datasets.map with num_proc")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON line at the end")
    p.add_argument("--child", choices=["kgpt2", "datasets"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kgpt2-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "pubmed_1300.jsonl"
    articles = write_input(data, args.limit)
    print(f"input: {articles} articles, {data.stat().st_size / 1e6:.1f} MB JSONL, read {args.repeat}x", file=sys.stderr)
    runs = [["--child", "kgpt2"], ["--child", "datasets"]]
    if args.num_proc:
        runs.append(["--child", "datasets", "--num-proc", str(args.num_proc)])
    rows = []
    env = dict(os.environ, TOKENIZERS_PARALLELISM="true")
    for extra in runs:
        cmd = [sys.executable, __file__, "--data", str(data), "--workdir", str(workdir),
               "--repeat", str(args.repeat), *extra] + (["--threads", str(args.threads)] if args.threads else [])
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            sys.exit(f"{' '.join(extra)} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        for path in ("kgpt2-shards", "hf-cache"):
            shutil.rmtree(workdir / path, ignore_errors=True)
    base = next(r for r in rows if r["implementation"] == "datasets.map")["tokens_per_s"]
    base_cpu = next(r for r in rows if r["implementation"] == "datasets.map")["cpu_seconds"]
    print("| implementation | tokens | wall s | tokens/s | vs datasets.map | CPU s (whole process) | "
          "CPU vs datasets.map | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['implementation']} ({r['engine']}) | {r['tokens']:,} | {r['seconds']:.1f} | "
              f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.2f}x | {r['cpu_seconds']:.1f} | "
              f"{base_cpu / r['cpu_seconds']:.2f}x less | {r['peak_rss_mb']:,.0f} MB |")
    if args.json:
        print(json.dumps(rows))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
