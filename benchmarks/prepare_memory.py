"""Peak memory of `kgpt2 prepare` on one huge document (issue 15's goal: at most 1 GB for 50 MB).

The document is real PubMed sentences (../shared/data, MemSum val.jsonl)
repeated to `--mb` million characters, one sentence per line, written as a
plain .txt file (format `text`) and as one `papers` JSON line
({"article_id", "article_text": [sentences], "abstract_text": []}). Each
(size, format, engine) runs `prepare` in its own subprocess, whose peak RSS
(ru_maxrss) is reported with its wall time and token count, one JSON object
per line. Engines: `tiktoken` (OpenAI's GPT-2 files) and `tokenizers` (a
512-token BPE trained on pydoc, the engine kgpt2 uses for tokenizers it
trains). `--code DIR` imports kgpt2 from another checkout (e.g. the commit
before the change) to measure it the same way.

    .venv/bin/python benchmarks/prepare_memory.py --mb 10 20 50
    .venv/bin/python benchmarks/prepare_memory.py --mb 1 --formats text --engines tiktoken   # smoke run
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


def write_document(folder: Path, million_chars: float) -> dict:
    """The huge document as `text` and `papers` files; returns {format: path}."""
    sentences = []
    for line in open(SHARED / "pubmed" / "memsum_pubmed_300" / "val.jsonl", encoding="utf-8"):
        sentences += [s.strip() for s in json.loads(line)["text"] if s.strip()]
    limit, body, size = int(million_chars * 1e6), [], 0
    while size < limit:
        s = sentences[len(body) % len(sentences)]
        body.append(s)
        size += len(s) + 1
    while size > limit:  # exactly `limit` characters or just under (prepare's cap is 50 M)
        size -= len(body.pop()) + 1
    paths = {"text": folder / "huge.txt", "papers": folder / "huge.jsonl"}
    paths["text"].write_text("\n".join(body), encoding="utf-8")
    paths["papers"].write_text(json.dumps({"article_id": "huge", "article_text": body, "abstract_text": []}) + "\n",
                               encoding="utf-8")
    return paths


def child(source: str, fmt: str, engine: str, out: str) -> dict:
    from kgpt2.data.shards import prepare
    from kgpt2.data.sources import open_source
    from kgpt2.model.tokenizer import Tokenizer

    if engine == "tiktoken":
        tokenizer = Tokenizer.from_dir(SHARED / "gpt2-tokenizer")
    else:
        tokenizer = Tokenizer.train([d.text for d in open_source("pydoc")], vocab_size=512)
    assert tokenizer.engine == engine
    start = time.perf_counter()
    m = prepare(source, out, tokenizer, fmt=fmt, splits="train", progress=False)
    return {"seconds": round(time.perf_counter() - start, 1), "tokens": m["splits"]["train"]["num_tokens"],
            "articles": m["splits"]["train"]["num_articles"],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, nargs="+", default=[10, 20, 50], help="document sizes, million characters")
    p.add_argument("--formats", nargs="+", default=["text", "papers"], choices=["text", "papers"])
    p.add_argument("--engines", nargs="+", default=["tiktoken", "tokenizers"], choices=["tiktoken", "tokenizers"])
    p.add_argument("--code", default=str(ROOT), help="kgpt2 checkout to import (default: this one)")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    env = dict(os.environ, PYTHONPATH=str(Path(args.code).resolve()))
    work = Path(tempfile.mkdtemp(prefix="kgpt2-prepare-memory-"))
    try:
        for mb in args.mb:
            paths = write_document(work, mb)
            for fmt in args.formats:
                for engine in args.engines:
                    out = work / "shards"
                    r = subprocess.run([sys.executable, __file__, "--child", str(paths[fmt]), fmt, engine, str(out)],
                                       env=env, capture_output=True, text=True)
                    shutil.rmtree(out, ignore_errors=True)
                    row = {"million_chars": mb, "format": fmt, "engine": engine, "code": args.code}
                    if r.returncode != 0:
                        row["error"] = (r.stderr.strip().splitlines() or ["?"])[-1][:300]
                    else:
                        row.update(json.loads(r.stdout.strip().splitlines()[-1]))
                    print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
