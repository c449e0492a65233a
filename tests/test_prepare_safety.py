"""`kgpt2 prepare` never loses a user's file: refused --out folders, kills, read-only and full disks.

Each case asserts the exact one-line message, the exit status and that every
file that was there before is still there with the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kgpt2.data.shards import ShardSet, prepare

ROOT = Path(__file__).resolve().parents[1]


def tree(root: Path) -> dict:
    """Every file and folder under `root`: path -> sha256 of its bytes (folders: 'dir')."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def cli(shared_data, capsys, monkeypatch):
    """`kgpt2 prepare ARGS` through the CLI's main(): (exit status, stderr without the progress bar)."""
    from kgpt2.cli import main

    def run(*argv, cwd=None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        rc = main(["prepare", *argv, "--tokenizer", str(shared_data / "gpt2-tokenizer")])
        lines = capsys.readouterr().err.splitlines(keepends=True)
        return rc, "".join(line for line in lines if not line.startswith(("\r", "prepare ")))

    return run


@pytest.fixture
def corpus(tmp_path, shared_data) -> Path:
    """proj/corpus.jsonl: five real MemSum records."""
    proj = tmp_path / "proj"
    proj.mkdir()
    lines = open(shared_data / "pubmed" / "memsum_pubmed_300" / "val.jsonl", "rb").readlines()[:5]
    (proj / "corpus.jsonl").write_bytes(b"".join(lines))
    return proj / "corpus.jsonl"


def test_new_and_empty_out_folders_are_written(cli, corpus, tmp_path):
    assert cli("--source", str(corpus), "--out", str(tmp_path / "new" / "shards"))[0] == 0
    (tmp_path / "empty").mkdir()
    assert cli("--source", str(corpus), "--out", str(tmp_path / "empty"))[0] == 0
    assert sum(s["num_articles"] for s in ShardSet(tmp_path / "empty").manifest["splits"].values()) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new", "proj"]  # no temp folder left


def test_a_previous_shard_set_is_replaced_and_nothing_else_is_left(cli, corpus, tmp_path):
    out = tmp_path / "shards"
    assert cli("--source", "pydoc", "--out", str(out))[0] == 0
    assert cli("--source", str(corpus), "--out", str(out))[0] == 0
    assert ShardSet(out).manifest["source"] == str(corpus)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj", "shards"]


@pytest.mark.parametrize("extra", ["notes.txt", "sub/data.bin", ".hidden"])
def test_a_folder_holding_anything_else_is_refused_untouched(cli, corpus, tmp_path, extra):
    out = tmp_path / "shards"
    assert cli("--source", "pydoc", "--out", str(out))[0] == 0  # a shard set ...
    (out / extra).parent.mkdir(parents=True, exist_ok=True)
    (out / extra).write_text("the user's own work")  # ... plus one file of the user's
    before = tree(tmp_path)
    rc, err = cli("--source", str(corpus), "--out", str(out))
    first = extra.split("/")[0]
    assert (rc, err) == (2, f"kgpt2: error: --out '{out}' holds files that are not a kgpt2 shard set "
                            f"(e.g. {first}); kgpt2 replaces only its own shard sets, so name a new or empty folder\n")
    assert tree(tmp_path) == before


def test_a_folder_of_user_files_without_a_manifest_is_refused(cli, corpus, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "a.csv").write_text("x,y\n1,2\n")
    (out / "manifest.json").write_text('{"mine": true}')  # a manifest, but not kgpt2's
    before = tree(tmp_path)
    rc, err = cli("--source", str(corpus), "--out", str(out))
    assert rc == 2 and err == (f"kgpt2: error: --out '{out}' holds files that are not a kgpt2 shard set "
                               "(e.g. a.csv); kgpt2 replaces only its own shard sets, so name a new or empty folder\n")
    assert tree(tmp_path) == before


def test_the_source_or_a_folder_holding_it_is_refused(cli, corpus, tmp_path):
    proj = corpus.parent
    (proj / "data").mkdir()
    nested = proj / "data" / "more.jsonl"
    nested.write_bytes(corpus.read_bytes())
    before = tree(tmp_path)
    holds = "kgpt2: error: --out '{out}' holds the source '{src}'; write the shards to a new folder, e.g. --out {out}/shards\n"
    cases = [(corpus, proj), (nested, proj), (proj / "data", proj / "data"), (corpus, corpus)]
    for source, out in cases:
        assert cli("--source", str(source), "--out", str(out)) == (2, holds.format(out=out, src=source))
    # `--out .` from the source's folder
    assert cli("--source", "corpus.jsonl", "--out", ".", cwd=proj) == (2, holds.format(out=proj, src=corpus))
    inside = ("kgpt2: error: --out '{out}' is inside the source folder '{src}'; write the shards elsewhere\n")
    out = proj / "data" / "shards"
    assert cli("--source", str(proj / "data"), "--out", str(out)) == (2, inside.format(out=out, src=proj / "data"))
    assert tree(tmp_path) == before


def test_the_working_folder_and_a_file_are_refused(cli, corpus, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "notes.txt").write_text("keep me")
    before = tree(tmp_path)
    assert cli("--source", str(corpus), "--out", ".", cwd=work) == (
        2, f"kgpt2: error: --out '{work}' is the folder you are working in; name a new folder for the shards, "
           "e.g. --out shards\n")
    assert cli("--source", str(corpus), "--out", str(tmp_path / "notes.txt")) == (
        2, f"kgpt2: error: --out '{tmp_path / 'notes.txt'}' is a file, not a folder; name a new folder for the shards\n")
    out = tmp_path / "notes.txt" / "shards"
    assert cli("--source", str(corpus), "--out", str(out)) == (
        2, f"kgpt2: error: cannot write the shards to '{out}' ('{tmp_path / 'notes.txt'}'): a file is in the way; "
           "choose another path\n")
    assert cli("--source", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")) == (
        2, f"kgpt2: error: source '{tmp_path / 'nope.jsonl'}' does not exist\n")
    assert tree(tmp_path) == before


def test_latin1_jsonl_lines_are_skipped_and_counted(cli, tmp_path):
    good = json.dumps({"article": "The patient recovered fully.", "abstract": "Recovery."})
    corpus = tmp_path / "mixed.jsonl"
    corpus.write_bytes('{"article": "Le café était fermé.", "abstract": "Fermé."}\n'.encode("latin-1")
                       + (good + "\n").encode())
    assert cli("--source", str(corpus), "--out", str(tmp_path / "shards"), "--splits", "train")[0] == 0
    manifest = ShardSet(tmp_path / "shards").manifest
    assert manifest["splits"]["train"]["num_articles"] == 1
    assert manifest["skipped"] == {"total": 1, "by_reason": {"not UTF-8": 1}, "examples": [f"{corpus}:1: not UTF-8"]}

    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(('{"article": "Café", "abstract": "Thé"}\n' * 2).encode("latin-1"))
    before = tree(tmp_path)
    assert cli("--source", str(latin), "--out", str(tmp_path / "o2")) == (
        2, f"kgpt2: error: none of the 2 lines of '{latin}' is UTF-8 JSON; if it is in another encoding, "
           "re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8)\n")
    assert tree(tmp_path) == before


# Read-only and full disks: small tmpfs mounts (root only); chmod would not stop root.
@pytest.fixture
def tmpfs(tmp_path):
    mounts = []

    def mount(name: str, size: str = "1m") -> Path:
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip() or 'not root'})")
        mounts.append(d)
        return d

    yield mount
    for d in mounts:
        subprocess.run(["umount", str(d)], capture_output=True)


def _read_only(d: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)
    with pytest.raises(OSError):  # really read-only, even for root
        (d / "probe").write_text("x")


def test_read_only_folder_is_one_sentence_and_the_old_set_stays(cli, corpus, tmp_path, tmpfs):
    disk = tmpfs("ro")
    (disk / "keep.txt").write_text("the user's file")
    assert cli("--source", "pydoc", "--out", str(disk / "shards"))[0] == 0
    _read_only(disk)
    before = tree(disk)
    for out in (disk / "shards", disk / "new"):
        assert cli("--source", str(corpus), "--out", str(out)) == (
            2, f"kgpt2: error: cannot write the shards to '{out}': it is on a read-only file system; "
               "choose a writable folder for --out\n")
    assert tree(disk) == before


def test_full_disk_is_one_sentence_and_leaves_no_half_written_set(cli, tmp_path, tmpfs, shared_data):
    disk = tmpfs("full", size="512k")
    (disk / "keep.txt").write_text("the user's file")
    small = tmp_path / "small.jsonl"
    small.write_bytes(b"".join(open(shared_data / "pubmed" / "memsum_pubmed_300" / "val.jsonl", "rb").readlines()[:3]))
    assert cli("--source", str(small), "--out", str(disk / "shards"))[0] == 0
    before = tree(disk)
    big = shared_data / "pubmed" / "memsum_pubmed_300" / "val.jsonl"  # ~1.8 MB of text: > 1 MB of tokens
    assert cli("--source", str(big), "--out", str(disk / "shards")) == (
        2, f"kgpt2: error: cannot write the shards to '{disk / 'shards'}': the disk is full; "
           "free some space or choose another --out\n")
    assert tree(disk) == before  # the previous set intact, no temp folder left
