"""`kgpt2 prepare` never loses a user's file: refused --out folders, kills, read-only and full disks.

Each case asserts the exact one-line message, the exit status and that every
file that was there before is still there with the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kgpt2.data.shards import ShardSet, prepare
from kgpt2.errors import UserError
from kgpt2.model.tokenizer import Tokenizer

pytestmark = pytest.mark.backend_neutral  # data preparation's safety (atomic folders, interrupts)

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
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"article": "cut\n')
    before = tree(tmp_path)
    assert cli("--source", str(latin), "--out", str(tmp_path / "o2")) == (
        2, f"kgpt2: error: none of the 2 lines of '{latin}' is UTF-8 JSON; it is in another encoding: "
           "re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8)\n")
    assert cli("--source", str(broken), "--out", str(tmp_path / "o3")) == (
        2, f"kgpt2: error: none of the 1 lines of '{broken}' is UTF-8 JSON; it is not JSON Lines: pass --format\n")
    assert tree(tmp_path) == before


# Read-only folders: conftest's `read_only` (root: a read-only bind mount, which chmod could not give root; a
# user: chmod). Full disks: a small tmpfs (conftest's `tmpfs`, root only).
def test_read_only_folder_is_one_sentence_and_the_old_set_stays(cli, corpus, tmp_path, read_only):
    disk = tmp_path / "ro"
    disk.mkdir()
    (disk / "keep.txt").write_text("the user's file")
    assert cli("--source", "pydoc", "--out", str(disk / "shards"))[0] == 0
    read_only(disk)
    before = tree(disk)
    assert cli("--source", "pydoc", "--out", str(disk / "shards"))[0] == 0  # the same set again: nothing to write
    why = ("it is on a read-only file system; choose a writable folder for --out" if os.geteuid() == 0 else
           "permission denied; choose a folder you may write to, or fix its permissions")
    for out in (disk / "shards", disk / "new"):
        assert cli("--source", str(corpus), "--out", str(out)) == (
            2, f"kgpt2: error: cannot write the shards to '{out}': {why}\n")
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


# Kills: a prepare in a subprocess pauses at a named point and is SIGKILLed (or SIGINTed) there.
# `via` "cli" runs it as `kgpt2 prepare` (kgpt2.cli.main), "library" as kgpt2.data.shards.prepare.
KILLED_PREPARE = r"""
import pathlib, sys, time
import kgpt2.data.shard_folder as folder
import kgpt2.data.shard_writer as writer
import kgpt2.data.shards as shards
from kgpt2.cli import main
from kgpt2.model.tokenizer import Tokenizer

source, out, tokenizer, ready, point, via = sys.argv[1:7]

def pause():  # until killed, or until the test writes READY.go
    pathlib.Path(ready).write_text("paused")
    go, deadline = pathlib.Path(ready + ".go"), time.monotonic() + 600
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)

if point == "writing":  # after a few articles are in the temp folder
    add, added = writer.SplitWriter.add, []
    def add_then_pause(self, *args, **kwargs):
        add(self, *args, **kwargs)
        added.append(1)
        if len(added) == 3:
            self.tokens.flush()
            pause()
    writer.SplitWriter.add = add_then_pause
else:  # "publishing": the old set moved aside, the new one not yet renamed in
    rename = folder.os.rename
    def rename_then_pause(a, b):
        rename(a, b)
        pause()
    folder.os.rename = rename_then_pause
if via == "cli":
    sys.exit(main(["-q", "prepare", "--source", source, "--out", out, "--tokenizer", tokenizer]))
shards.prepare(source, out, Tokenizer.from_dir(tokenizer), progress=False)
"""


def _ctrl_c_as_in_a_terminal():
    """SIGINT at its default, as a shell starts a command: pytest-xdist's workers ignore SIGINT, and an
    ignored signal stays ignored across exec (Python then installs no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _prepare_paused_at(point, source, out, shared_data, ready: Path, via="library") -> subprocess.Popen:
    """A prepare process, paused at `point` (its stderr piped): killed there, or let go by writing READY.go."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PREPARE, str(source), str(out),
                             str(shared_data / "gpt2-tokenizer"), str(ready), point, via],
                            env=env, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_as_in_a_terminal)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "the prepare never reached the kill point"
        time.sleep(0.05)
    return proc


def _stop_prepare_at(point, source, out, shared_data, tmp_path, sig=signal.SIGKILL,
                     via="library") -> subprocess.Popen:
    """The prepare process, sent `sig` at `point` and ended (its stderr piped)."""
    ready = tmp_path / "ready"
    proc = _prepare_paused_at(point, source, out, shared_data, ready, via)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    ready.unlink()
    return proc


def test_ctrl_c_during_prepare_says_what_is_true_for_prepare(tmp_path, corpus, shared_data, gpt2_tokenizer):
    out = tmp_path / "shards"
    prepare("pydoc", out, gpt2_tokenizer, progress=False)
    before = tree(out)
    proc = _stop_prepare_at("writing", corpus, out, shared_data, tmp_path, sig=signal.SIGINT, via="cli")
    err = proc.stderr.read()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("kgpt2: interrupted; a shard set is moved into --out only once complete, "
                                            "so no half-written set is left; run the same command to start again")
    assert "checkpoint" not in err and "Traceback" not in err
    assert tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["proj", "shards"]


def test_sigkill_while_writing_keeps_the_old_set_and_the_next_prepare_cleans_up(tmp_path, corpus, shared_data,
                                                                                gpt2_tokenizer):
    out = tmp_path / "shards"
    prepare("pydoc", out, gpt2_tokenizer, progress=False)
    before = tree(out)
    pid = _stop_prepare_at("writing", corpus, out, shared_data, tmp_path).pid
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shards.kgpt2-lock", f".shards.kgpt2-tmp-{pid}", "proj",
                                                          "shards"]
    assert tree(out) == before  # the old set, untouched and usable
    assert ShardSet(out).split("train").num_articles > 0
    prepare(corpus, out, gpt2_tokenizer, progress=False)  # the re-run succeeds (the dead one's lock is free), cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj", "shards"]
    assert ShardSet(out).manifest["source"] == str(corpus)


def test_sigkill_between_the_two_renames_puts_the_old_set_back(tmp_path, corpus, shared_data, gpt2_tokenizer):
    out = tmp_path / "shards"
    first = prepare("pydoc", out, gpt2_tokenizer, progress=False)
    before = tree(out)
    pid = _stop_prepare_at("publishing", corpus, out, shared_data, tmp_path).pid
    old = f".shards.kgpt2-old-{pid}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shards.kgpt2-lock", old, f".shards.kgpt2-tmp-{pid}", "proj"]
    assert tree(tmp_path / old) == before  # aside, not lost
    # The next prepare (same inputs as the old set) puts it back: nothing to rebuild.
    assert prepare("pydoc", out, gpt2_tokenizer, progress=False) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj", "shards"]
    assert tree(out) == before


def test_a_second_prepare_into_the_same_out_is_refused_while_the_first_runs(cli, tmp_path, corpus, shared_data):
    """Both used to report success, and the set of the one that finished last silently replaced the other's."""
    out = tmp_path / "shards"
    ready = tmp_path / "ready"
    first = _prepare_paused_at("writing", corpus, out, shared_data, ready, via="cli")
    try:
        before = tree(tmp_path)
        rc, err = cli("--source", "pydoc", "--out", str(out))
        said = (rf"kgpt2: error: another kgpt2 prepare is writing into '{re.escape(str(out))}' \(process {first.pid} "
                rf"on {re.escape(socket.gethostname())} since [^)]+\); wait for it to finish, or choose another --out\n")
        assert rc == 2 and re.fullmatch(said, err), err
        assert tree(tmp_path) == before  # the refused one wrote nothing, removed nothing
        with pytest.raises(UserError, match="another kgpt2 prepare is writing into"):  # the library says the same
            prepare("pydoc", out, Tokenizer.from_dir(shared_data / "gpt2-tokenizer"), progress=False)
        (tmp_path / "ready.go").write_text("go")
        assert first.wait(timeout=120) == 0, first.stderr.read()[-2000:]
    finally:
        first.kill()
        first.wait()
    assert ShardSet(out).manifest["source"] == str(corpus)  # the first one's set, whole
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no lock file left
    assert cli("--source", "pydoc", "--out", str(out))[0] == 0  # and the folder is free again


def test_cleanup_removes_only_its_own_folders_of_dead_processes(tmp_path):
    from kgpt2.data.shard_folder import clean_leftovers

    live = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        kept = [f".shards.kgpt2-tmp-{live.pid}", f".other.kgpt2-tmp-{dead.pid}", ".shards.tmp-abc",
                f"shards.kgpt2-tmp-{dead.pid}", "shards"]
        for name in kept + [f".shards.kgpt2-tmp-{dead.pid}"]:
            (tmp_path / name).mkdir()
            (tmp_path / name / "f").write_text(name)
        clean_leftovers(tmp_path / "shards")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    finally:
        live.kill()
        live.wait()


def _tricky_text(shared_data, chars: int) -> str:
    """Real PubMed sentences with the whitespace GPT-2's regex treats specially mixed in."""
    sentences = []
    for line in open(shared_data / "pubmed" / "memsum_pubmed_300" / "val.jsonl", encoding="utf-8"):
        sentences += json.loads(line)["text"]
    odd = ["  ", "\t", "\r\n", "\n\n\n", " \u00a0", "\u3000", "\x1c", " " * 1000, "<|endoftext|>", " 's", "\n "]
    parts, size, i = [], 0, 0
    while size < chars:
        piece = sentences[i % len(sentences)] + odd[i % len(odd)]
        parts.append(piece)
        size += len(piece)
        i += 1
    return "".join(parts)


def test_a_huge_document_is_encoded_in_pieces_exactly_like_tiktoken_encodes_it_whole(tmp_path, shared_data,
                                                                                     gpt2_tokenizer):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    from kgpt2.data.shards import encoding_pieces

    d = shared_data / "gpt2-tokenizer"
    oracle = tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, special_tokens={"<|endoftext|>": 50256},
                               mergeable_ranks=data_gym_to_mergeable_bpe_ranks(str(d / "vocab.bpe"),
                                                                               str(d / "encoder.json")))
    text = _tricky_text(shared_data, 3_000_000)
    assert len(encoding_pieces(text)) > 40
    (tmp_path / "huge.txt").write_text(text, encoding="utf-8")
    prepare(tmp_path / "huge.txt", tmp_path / "out", gpt2_tokenizer, splits="train", progress=False)
    ids = ShardSet(tmp_path / "out").split("train").article_tokens(0)[:-1]
    assert ids.tolist() == oracle.encode_ordinary(text)


def test_pieces_match_whole_text_encoding_with_a_tokenizers_bpe(tmp_path, shared_data, pydoc_tokenizer):
    assert pydoc_tokenizer.engine == "tokenizers"
    text = _tricky_text(shared_data, 300_000)
    (tmp_path / "doc.txt").write_text(text, encoding="utf-8")
    prepare(tmp_path / "doc.txt", tmp_path / "out", pydoc_tokenizer, splits="train", progress=False)
    ids = ShardSet(tmp_path / "out").split("train").article_tokens(0)[:-1]
    assert ids.tolist() == pydoc_tokenizer._hf.encode(text, add_special_tokens=False).ids


@pytest.mark.slow  # a real `kgpt2` process: ~10 s to import Keras
def test_the_real_cli_exits_2_with_one_line(corpus):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    before = tree(corpus.parent)
    r = subprocess.run([sys.executable, "-m", "kgpt2.cli", "prepare", "--source", "corpus.jsonl", "--out", "."],
                       cwd=corpus.parent, env=env, capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (f"kgpt2: error: --out '{corpus.parent}' holds the source '{corpus}'; write the shards to a "
                        f"new folder, e.g. --out {corpus.parent}/shards\n")
    assert tree(corpus.parent) == before


def test_a_refused_out_folder_is_answered_before_keras_is_imported(corpus):
    """prepare checks --source and --out first and imports Keras (TensorFlow's ~10 s start) only after them."""
    script = ("import sys; from kgpt2.cli import main; code = main(sys.argv[1:]); "
              "print(code, [m for m in ('keras', 'keras_hub', 'tensorflow', 'jax') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", script, "prepare", "--source", "corpus.jsonl", "--out", "."],
                       cwd=corpus.parent, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                       timeout=120)
    assert r.stdout.splitlines()[-1] == "2 []", (r.stdout, r.stderr)
    assert r.stderr.startswith(f"kgpt2: error: --out '{corpus.parent}' holds the source")


PREPARE_SCRIPT = r"""
import sys
from kgpt2.data.shards import prepare
from kgpt2.errors import UserError
from kgpt2.model.tokenizer import Tokenizer

source, out, tokenizer = sys.argv[1:4]
try:
    prepare(source, out, Tokenizer.from_dir(tokenizer), progress=False)
except UserError as e:
    print(e)
    sys.exit(2)
"""


def test_permission_denied_is_one_sentence_for_a_user_who_may_not_write(tmp_path, corpus, shared_data,
                                                                        gpt2_tokenizer):
    import shutil
    import tempfile

    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run the prepare as `nobody` (root ignores file modes)")
    nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    root = Path(tempfile.mkdtemp(prefix="kgpt2-perm-"))  # pytest's tmp_path is private to root
    try:
        root.chmod(0o755)
        shutil.copy(corpus, root / "corpus.jsonl")
        (root / "corpus.jsonl").chmod(0o644)
        locked = root / "locked"
        prepare("pydoc", locked / "shards", gpt2_tokenizer, progress=False)
        (locked / "keep.txt").write_text("the user's file")
        for p in [locked, *locked.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)  # readable by all, writable by root only
        probe = subprocess.run(nobody + ["touch", str(locked / "probe")], capture_output=True)
        assert probe.returncode != 0, "nobody could write: the test would prove nothing"
        secret = root / "secret"  # a folder nobody may not even list
        secret.mkdir(mode=0o700)
        (secret / "mine.txt").write_text("private")
        before = tree(root)
        for out in (locked / "shards", secret):
            r = subprocess.run(nobody + [sys.executable, "-c", PREPARE_SCRIPT, str(root / "corpus.jsonl"), str(out),
                                         str(shared_data / "gpt2-tokenizer")],
                               env=dict(os.environ, PYTHONPATH=str(ROOT), HOME=str(root)), capture_output=True,
                               text=True, timeout=300)
            assert (r.returncode, r.stdout) == (2, f"cannot write the shards to '{out}': permission denied; choose a "
                                                   "folder you may write to, or fix its permissions\n"), r.stderr[-2000:]
        assert tree(root) == before
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_latin1_lines_of_instruction_jsonl_are_skipped_not_the_whole_file(tmp_path, gpt2_tokenizer):
    from kgpt2.data.sources import detect_format

    good = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    corpus = tmp_path / "alpaca.jsonl"
    corpus.write_bytes(json.dumps(good).encode() + b"\n"
                       + '{"instruction": "Traduis", "input": "café", "output": "coffee"}\n'.encode("latin-1")
                       + json.dumps(good).encode() + b"\n")
    assert detect_format(str(corpus)) == "alpaca"
    m = prepare(corpus, tmp_path / "out", gpt2_tokenizer, splits="train", progress=False)
    assert m["splits"]["train"]["num_articles"] == 2
    assert m["skipped"]["by_reason"] == {"not UTF-8": 1} and m["skipped"]["examples"] == [f"{corpus}:2: not UTF-8"]


def test_two_prepares_of_one_out_at_once_leave_one_whole_set(tmp_path, corpus, shared_data, gpt2_tokenizer):
    out = tmp_path / "shards"
    prepare("pydoc", out, gpt2_tokenizer, progress=False)
    sources = [corpus, shared_data / "pubmed" / "memsum_pubmed_300" / "val.jsonl"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", PREPARE_SCRIPT, str(s), str(out), str(shared_data / "gpt2-tokenizer")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in sources]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    assert all(rc in (0, 2) and "Traceback" not in err for rc, _, err in results), results
    assert any(rc == 0 for rc, _, _ in results)
    winner = ShardSet(out).manifest["source"]  # one whole set, from one of the two
    assert winner in {str(s) for s in sources}
    shards = ShardSet(out)
    for name in ("train", "validation", "test"):  # whole: every file complete and consistent
        split = shards.split(name)
        assert len(split.offsets) == split.num_articles + 1 and split.offsets[-1] == split.num_tokens
        assert (out / f"{name}.bin").stat().st_size == 2 * split.num_tokens
    assert sum(s["num_articles"] for s in shards.manifest["splits"].values()) > 0
    prepare(winner, out, gpt2_tokenizer, progress=False)  # the next prepare leaves nothing else behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj", "shards"]


def _offline_tokenizer_download(monkeypatch) -> list:
    """keras_hub's GPT2Tokenizer.from_preset fails as it does offline (requests' error over socket.gaierror)."""
    import keras_hub

    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except socket.gaierror as e:
            raise OSError("HTTPSConnectionPool(host='api.kaggle.com', port=443): Max retries exceeded with url: "
                          "/v1/models (Caused by NameResolutionError(\"HTTPSConnection(host='api.kaggle.com'") from e

    monkeypatch.setattr(keras_hub.models.GPT2Tokenizer, "from_preset", offline)
    return calls


def test_a_mistyped_source_is_named_before_any_tokenizer_download(tmp_path, capsys, monkeypatch):
    from kgpt2.cli import main

    calls = _offline_tokenizer_download(monkeypatch)
    assert main(["prepare", "--source", str(tmp_path / "corpsu.jsonl"), "--out", str(tmp_path / "shards")]) == 2
    assert capsys.readouterr().err == f"kgpt2: error: source '{tmp_path / 'corpsu.jsonl'}' does not exist\n"
    (tmp_path / "notes.json").write_text("[1, 2]\n")  # a file of the wrong kind, also before the download
    assert main(["prepare", "--source", str(tmp_path / "notes.json"), "--out", str(tmp_path / "shards")]) == 2
    assert "cannot tell the format of" in capsys.readouterr().err and calls == []


def test_an_offline_preset_download_is_one_plain_sentence_naming_prepares_options(corpus, tmp_path, capsys,
                                                                                 monkeypatch):
    from kgpt2.cli import main

    _offline_tokenizer_download(monkeypatch)
    assert main(["prepare", "--source", str(corpus), "--out", str(tmp_path / "shards")]) == 2
    assert capsys.readouterr().err == (
        "kgpt2: error: could not download the tokenizer of preset 'gpt2_base_en': no network connection (and it is "
        "not in the KerasHub cache); to work offline, pass --tokenizer DIR (vocabulary.json + merges.txt, or "
        "OpenAI's encoder.json + vocab.bpe) or --preset with a local preset directory\n")


def test_a_table_jsonl_with_a_bad_or_cut_line_is_prepared_without_it(cli, tmp_path):
    """One line that is not JSON (or a cut-off last line) refused the whole file with pandas' own words:
    `badline.jsonl: cannot parse near row 0: Unexpected character found when decoding 'null' at position 28`."""
    bad = tmp_path / "badline.jsonl"
    bad.write_text('{"text": "hello world one"}\nnot json at all\n{"text": "hello world two"}\n{"text": "cut')
    rc, err = cli("--source", str(bad), "--out", str(tmp_path / "shards"), "--splits", "train")
    assert rc == 0 and err.startswith(f"kgpt2: {bad} has no id column: its rows are named badline.jsonl:<row>")
    manifest = ShardSet(tmp_path / "shards").manifest
    assert ShardSet(tmp_path / "shards").split("train").ids() == ["badline.jsonl:0", "badline.jsonl:2"]
    assert manifest["skipped"] == {"total": 2, "by_reason": {"invalid or truncated JSON": 2},
                                   "examples": [f"{bad}:2: invalid or truncated JSON",
                                                f"{bad}:4: invalid or truncated JSON"]}
    nothing = tmp_path / "nothing.jsonl"
    nothing.write_text("not json\n")
    before = tree(tmp_path)
    assert cli("--source", str(nothing), "--format", "table", "--out", str(tmp_path / "o")) == (
        2, f"kgpt2: error: source '{nothing}' holds no documents (1 record skipped, e.g. {nothing}:1: invalid or "
           "truncated JSON); it is not JSON Lines (one JSON object per line): leave --format out to detect its format\n")
    assert tree(tmp_path) == before


def test_a_shard_set_or_a_run_as_the_source_is_refused(cli, tmp_path, corpus):
    """`--source <shard set>` tokenised its *.ids.txt as articles (format "folder"); a run's files alike."""
    assert cli("--source", str(corpus), "--out", str(tmp_path / "shards"))[0] == 0
    run = tmp_path / "run"
    (run / "ckpt-10").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "notes.txt").write_text("a run's note")
    before = tree(tmp_path)
    shards = tmp_path / "shards"
    assert cli("--source", str(shards), "--out", str(tmp_path / "o")) == (
        2, f"kgpt2: error: '{shards}' is a kgpt2 shard set (what `kgpt2 prepare` writes), not a corpus; --source "
           f"takes the text it was made from (to train a model on the set itself: data.shards = \"{shards}\")\n")
    assert cli("--source", str(run), "--format", "folder", "--out", str(tmp_path / "o")) == (
        2, f"kgpt2: error: '{run}' is a kgpt2 run (config.json and checkpoints), not a corpus; --source takes the "
           "text itself (a file or folder of it, or a dataset)\n")
    assert tree(tmp_path) == before


def test_a_binary_file_as_the_source_is_named_binary_not_another_encoding(cli, tmp_path):
    """A weights file given as --source was told to re-encode itself with iconv; parts of it that happened to
    decode (a separator splits it) would have become articles."""
    weights = tmp_path / "model.weights.h5"
    weights.write_bytes(b"\x89HDF\r\n\x1a\n\x00\x00" + bytes(range(256)) * 64 + b"\n\nsome ascii words\n\n")
    before = tree(tmp_path)
    assert cli("--source", str(weights), "--separator", "\n\n", "--out", str(tmp_path / "o")) == (
        2, f"kgpt2: error: source '{weights}' holds no documents (1 record skipped, e.g. {weights}: a binary file (it "
           "holds NUL bytes), not text)\n")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("encoding, named, iconv", [("utf-16", "UTF-16, not UTF-8", "utf-16"),
                                                     ("latin-1", "not UTF-8", "latin1")])
def test_a_text_file_in_another_encoding_is_told_how_to_re_encode_it(cli, tmp_path, encoding, named, iconv):
    """`holds no documents (1 records skipped, e.g. in/utf16.txt:1: not UTF-8)`: no hint, "1 records"."""
    path = tmp_path / "notes.txt"
    path.write_text("caf\u00e9 au lait\n", encoding=encoding)
    assert cli("--source", str(path), "--out", str(tmp_path / "o")) == (
        2, f"kgpt2: error: source '{path}' holds no documents (1 record skipped, e.g. {path}:1: {named}); "
           f"re-encode it as UTF-8 (e.g. iconv -f {iconv} -t utf-8)\n")


def test_a_csv_without_the_text_column_is_refused_without_a_note_about_ids_first(cli, tmp_path):
    """A warning "no id column ... keep the file's name and row order" came before the fatal error."""
    path = tmp_path / "t.csv"
    path.write_text("body\nx\n")
    assert cli("--source", str(path), "--out", str(tmp_path / "o")) == (
        2, f"kgpt2: error: {path}: no column 'text' (columns: body); pass --text-column\n")
