"""`kgpt2 prepare` met as a user meets it: again after a split file was deleted, on a source it may not read, on an
empty folder.

Before: a shard set with `train.bin` deleted (or cut short) was taken as made from these inputs, so the prepare
that `kgpt2 train`'s error asks for ("run `kgpt2 prepare` again") did nothing; a `.jsonl` it may not read was a
PermissionError traceback (exit 1); a subfolder it may not list was skipped in silence, its .txt files with it;
an empty folder said "reading 'x' as folder: 0 .txt files" before its error. Unreadable is chmod for a user; root
ignores chmod, so for root the OS's refusal is raised where it would come (os.scandir, open).
"""

import builtins
import errno
import os

import pytest

from kgpt2.data.shards import ShardSet

pytestmark = pytest.mark.backend_neutral  # tokenising and writing shards, no Keras


@pytest.fixture
def unreadable(monkeypatch):
    """`unreadable(path)`: `path` (a file or folder) refused to this process with EACCES, as chmod 000 does."""
    paths, undo = set(), []
    real_open, real_scandir = builtins.open, os.scandir

    def refused(p):  # a file descriptor (shutil.rmtree's) is none of them
        if isinstance(p, (str, os.PathLike)) and os.path.abspath(os.fspath(p)) in paths:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(p))

    def make(path):
        if os.geteuid() != 0:
            path.chmod(0)
            undo.append(lambda: path.chmod(0o755))
            return
        paths.add(os.path.abspath(path))
        monkeypatch.setattr(builtins, "open", lambda f, *a, **k: refused(f) or real_open(f, *a, **k))
        monkeypatch.setattr(os, "scandir", lambda p=".": refused(p) or real_scandir(p))

    yield make
    for step in undo:
        step()


def _corpus(tmp_path):
    (tmp_path / "corpus").mkdir()
    for i in range(30):
        (tmp_path / "corpus" / f"d{i}.txt").write_text(f"The with statement {i} wraps a block. " * 4)
    return tmp_path / "corpus"


@pytest.mark.parametrize("damage", ["deleted", "cut short"])
def test_prepare_again_mends_a_set_whose_split_file_was_lost(tmp_path, kgpt2_cli, pydoc_tokenizer_dir, damage):
    _corpus(tmp_path)
    args = ("prepare", "-q", "--source", "corpus", "--out", "shards", "--tokenizer", pydoc_tokenizer_dir, "--splits",
            "train")
    assert kgpt2_cli(*args, cwd=tmp_path).returncode == 0
    whole = ShardSet(tmp_path / "shards").manifest["content_hash"]
    mtime = (tmp_path / "shards" / "manifest.json").stat().st_mtime_ns
    assert kgpt2_cli(*args, cwd=tmp_path).returncode == 0  # whole and unchanged: still nothing written
    assert (tmp_path / "shards" / "manifest.json").stat().st_mtime_ns == mtime

    train = tmp_path / "shards" / "train.bin"
    if damage == "deleted":
        train.unlink()
    else:
        train.write_bytes(train.read_bytes()[:10])
    r = kgpt2_cli(*args, cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert ShardSet(tmp_path / "shards").manifest["content_hash"] == whole  # opens: the set is whole again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "shards"]  # no temp folder or lock left


def test_a_source_file_it_may_not_read_is_one_sentence(tmp_path, kgpt2_cli, pydoc_tokenizer_dir, unreadable):
    (tmp_path / "data").mkdir()
    corpus = tmp_path / "data" / "train.jsonl"
    corpus.write_text('{"article": "The body.", "abstract": "The gist."}\n')
    unreadable(corpus)
    for source in ("data/train.jsonl", "data"):  # the file, and the folder whose .jsonl is read at the top
        r = kgpt2_cli("prepare", "--source", source, "--out", "shards", "--tokenizer", pydoc_tokenizer_dir,
                      cwd=tmp_path)
        assert (r.returncode, r.stderr.splitlines()[-1]) == (
            2, "kgpt2: error: cannot read the source 'data/train.jsonl': permission denied; check the path and that "
               "you may read it"), r.stderr
        assert "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize("fmt", [[], ["--format", "folder"]])
def test_a_subfolder_it_may_not_list_is_named_not_skipped(tmp_path, kgpt2_cli, pydoc_tokenizer_dir, unreadable, fmt):
    corpus = _corpus(tmp_path)
    (corpus / "private").mkdir()
    (corpus / "private" / "more.txt").write_text("Articles the user meant to train on.")
    unreadable(corpus / "private")
    r = kgpt2_cli("prepare", "--source", "corpus", "--out", "shards", "--tokenizer", pydoc_tokenizer_dir, *fmt,
                  cwd=tmp_path)
    assert (r.returncode, r.stderr) == (
        2, "kgpt2: error: cannot read the source 'corpus/private': permission denied; check the path and that you "
           "may read it\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_an_empty_folder_is_one_sentence(tmp_path, kgpt2_cli, pydoc_tokenizer_dir):
    (tmp_path / "empty").mkdir()
    r = kgpt2_cli("prepare", "--source", "empty", "--out", "shards", "--tokenizer", pydoc_tokenizer_dir, cwd=tmp_path)
    assert (r.returncode, r.stderr) == (2, "kgpt2: error: folder 'empty' holds no .txt files\n")
