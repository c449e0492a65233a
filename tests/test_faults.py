"""Faults a user meets, injected: kills at named points, damaged checkpoints,
two trainers on one run, read-only and full disks, a file where a folder is.

Each test asserts the message, the exit status, and that what was on disk
before is still there, byte for byte (`tree_hashes`). Kills use the test hook
`KGPT2_FAULT_POINT=<name>` (the trainer SIGKILLs itself there) and
`KGPT2_FAULT_PAUSE=<name>` (it waits there, holding its lock).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kgpt2.errors import UserError
from kgpt2.training.checkpoints import CheckpointManager, restore_checkpoint

pytestmark = pytest.mark.backend

# 6 + 3 steps: checkpoints at 2, 4, 6 (stage end), 8, 9 (stage end); keep_last=1 makes cleanup work
PLAN = ["train.stages=[2, 2]", "train.batch_size=32", "train.checkpoint_every=2", "train.keep_last=1",
        "train.eval_batches=1"]


def tree_hashes(root: Path, skip=(".lock",)) -> dict:
    """{relative path: sha256} of every file under `root` (names in `skip` left out)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not any(s in p.parts for s in skip)}


def cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """`kgpt2 -q ARGS` in a subprocess: for kills (the trainer SIGKILLs itself at KGPT2_FAULT_POINT); the
    rest run in this process (`kgpt2_cli`), without ~15 s of importing TensorFlow again."""
    return subprocess.run([sys.executable, "-m", "kgpt2.cli", "-q", *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})), timeout=timeout)


def train_args(root, preset, shards, overrides, run="r") -> list[str]:
    return ["train", *overrides, f"checkpoints_root={root}", f"model.preset={preset}", f"data.shards={shards}",
            f"run={run}", *PLAN]


def final_weights(run_dir: Path) -> dict:
    ckpt = CheckpointManager(run_dir).newest_intact()
    with np.load(ckpt.path / "weights.npz") as w:
        return {k: w[k] for k in w.files}


def assert_same_weights(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bit-identical


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_preset, pydoc_shards, make_tiny_config):
    """An uninterrupted run of the plan, trained in this process."""
    from kgpt2.train import train

    root = tmp_path_factory.mktemp("reference")
    cfg = make_tiny_config(root, tiny_preset, pydoc_shards, "run=r", *PLAN)
    train(cfg, verbose=0)
    return cfg.run_dir


@pytest.fixture
def copied_run(reference, tmp_path) -> Path:
    run = tmp_path / "r"
    shutil.copytree(reference, run, symlinks=True)
    return run


def damage(ckpt: Path, how: str) -> None:
    weights = ckpt / "weights.npz"
    if how == "state":  # cut short: no step or cursor to list the checkpoint by (it was skipped without a word)
        (ckpt / "state.json").write_bytes((ckpt / "state.json").read_bytes()[:10])
    elif how == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif how == "deleted":
        weights.unlink()
    else:  # same size, one byte changed
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))


# -- damaged newest checkpoint: evaluate, generate, export, train fall back -----------------------
@pytest.mark.parametrize("how", ["truncated", "deleted", "checksum", "state"])
def test_damaged_newest_checkpoint_falls_back_for_readers(copied_run, how, caplog):
    from kgpt2.run import Run

    store = CheckpointManager(copied_run)
    newest, older = store.list()[-1], store.list()[-2]
    damage(newest.path, how)
    before = tree_hashes(copied_run)
    with caplog.at_level(logging.WARNING, logger="kgpt2"):
        assert Run(copied_run).checkpoint("latest").id == older.id
        model, _, _ = Run(copied_run).load_model("latest")
    lines = [r.getMessage() for r in caplog.records if newest.id in r.getMessage()]
    assert len(lines) == 2 and "is damaged" in lines[0] and "leaving it as it is" in lines[0]
    assert {"deleted": "missing", "truncated": "bytes", "checksum": "checksum", "state": "unreadable"}[how] in lines[0]
    assert Run(copied_run).checkpoint_ids()[-1] == older.id  # the demo's picker and evaluate's `all`
    with pytest.raises(UserError, match=f"checkpoint .*{newest.id}' is damaged"):
        Run(copied_run).load_model(newest.id)  # asked for by name: refused in one sentence
    assert tree_hashes(copied_run) == before  # nothing deleted, nothing changed


def test_a_checkpoint_restored_twice_is_read_once_and_a_changed_file_again(copied_run, monkeypatch):
    import kgpt2.training.checkpoint_manifest as verify
    from kgpt2.run import Run

    reads, real = [], verify._sha256
    monkeypatch.setattr(verify, "_sha256", lambda path: reads.append(path.name) or real(path))
    monkeypatch.setattr(verify, "_HASHED", {})
    newest = CheckpointManager(copied_run).list()[-1]
    files = ["weights.npz"]  # all that a reader loading only the weights checks (Run.restore)
    model, _, _ = Run(copied_run).load_model("latest")  # picking `latest`, then restoring it: two checks
    assert sorted(reads) == sorted(files * 2), "files copied just now are within RACY_NS: not remembered"
    reads.clear()
    monkeypatch.setattr(verify, "RACY_NS", 0)  # the copy counts as old now
    time.sleep(0.05)  # past the file system's clock tick
    for _ in range(2):
        assert Run(copied_run).restore(model, "latest") == newest.id
    assert sorted(reads) == files, "two restores of one checkpoint read each file once"
    damage(newest.path, "checksum")  # same size, one byte changed: a new mtime and ctime
    with pytest.raises(UserError, match=f"checkpoint .*{newest.id}' is damaged .*does not match its checksum"):
        Run(copied_run).restore(model, newest.id)
    assert reads.count("weights.npz") == 2
    assert Run(copied_run).restore(model, "latest") != newest.id  # skipped now, with its warning line


def test_generate_and_evaluate_cli_fall_back(copied_run, tmp_path, kgpt2_cli):
    newest = CheckpointManager(copied_run).list()[-1]
    damage(newest.path, "truncated")
    before = tree_hashes(copied_run)
    out = kgpt2_cli("-q", "generate", "--run", str(copied_run), "--prompt", "The", "--max-new-tokens", "4")
    assert out.returncode == 0, out.stderr
    assert f"checkpoint '{newest.path}' is damaged (weights.npz is 100 bytes" in out.stderr
    out = kgpt2_cli("-q", "export", "--run", str(copied_run), "--to", "preset", str(tmp_path / "exported"))
    assert out.returncode == 0 and "is damaged" in out.stderr, out.stderr
    assert tree_hashes(copied_run) == before


def test_train_resumes_from_the_newest_intact_checkpoint(copied_run, reference, make_tiny_config, tiny_preset, pydoc_shards):
    from kgpt2.train import train

    store = CheckpointManager(copied_run)
    stage_end = [c for c in store.list() if c.state.get("stage_end")][0]
    newest = store.list()[-1]
    # drop the later checkpoints (as if never written) but the newest, which is damaged
    for c in store.list():
        if c.step > stage_end.step and c.id != newest.id:
            shutil.rmtree(c.path)
    (copied_run / "stage-2.weights.h5").unlink()
    damage(newest.path, "checksum")
    damaged_bytes = tree_hashes(newest.path)
    cfg = make_tiny_config(copied_run.parent, tiny_preset, pydoc_shards, "run=r", *PLAN)
    train(cfg, verbose=0)
    assert_same_weights(final_weights(copied_run), final_weights(reference))
    kept = list(copied_run.glob(f"{newest.id}.damaged-*"))  # set aside, not deleted, when saved again
    assert len(kept) == 1 and tree_hashes(kept[0]) == damaged_bytes
    assert (copied_run / "stage-2.weights.h5").is_file()


# -- arrays by name, versions --------------------------------------------------------------
def test_arrays_are_restored_by_name_and_every_name_is_checked(tmp_path, tiny_preset, pydoc_shards, make_tiny_config, caplog):
    import json

    from kgpt2.model.models import build_causal_lm

    qv = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "lora.enabled=true", 'lora.targets=["query", "value"]')
    model = build_causal_lm(qv)
    for i, v in enumerate(model.trainable_variables):
        v.assign(np.full(v.shape, i, dtype=v.dtype))
    ckpt = CheckpointManager(tmp_path / "run").save(model, None, {"step": 1, "stage": 0})
    again = build_causal_lm(qv)
    order = list(reversed(again.trainable_variables))  # another order: names still match values
    restore_checkpoint(again, ckpt)
    for i, v in enumerate(again.trainable_variables):
        np.testing.assert_array_equal(np.asarray(v), np.full(v.shape, i), err_msg=v.path)
    assert order[0] is again.trainable_variables[-1]
    qk = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "lora.enabled=true", 'lora.targets=["query", "key"]')
    with pytest.raises(UserError, match=r"missing: .*key/lora_kernel_a.*unexpected: .*value/lora_kernel_a"):
        restore_checkpoint(build_causal_lm(qk), ckpt)
    state = json.loads((ckpt.path / "state.json").read_text())
    state["versions"] |= {"keras": "3.0.0", "keras_hub": "0.1.0"}
    (ckpt.path / "state.json").write_text(json.dumps(state))
    with caplog.at_level(logging.WARNING, logger="kgpt2"):
        restore_checkpoint(again, CheckpointManager(tmp_path / "run").newest_intact())
    assert "keras 3.0.0 (now" in caplog.text and "keras_hub 0.1.0 (now" in caplog.text


# -- the run lock and cleanup --------------------------------------------------------------
@pytest.mark.slow
def test_a_second_trainer_on_the_same_run_exits_2_naming_the_first(tmp_path, tiny_preset, pydoc_shards, tiny_overrides,
                                                                   kgpt2_cli):
    args = train_args(tmp_path, tiny_preset, pydoc_shards, tiny_overrides)
    env = dict(os.environ, KGPT2_FAULT_PAUSE="after-checkpoint", PYTHONUNBUFFERED="1")
    first = subprocess.Popen([sys.executable, "-m", "kgpt2.cli", "-q", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not list((tmp_path / "r").glob("ckpt-*/stage-1.weights.h5")) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # paused after the stage-end checkpoint, lock held
        before = tree_hashes(tmp_path / "r")
        second = kgpt2_cli("-q", *args)  # this process: another one than the first
        assert second.returncode == 2
        assert f"is in use by another kgpt2 process (process {first.pid} on " in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert tree_hashes(tmp_path / "r") == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_cleanup_leaves_temp_folders_of_live_processes(tmp_path):
    from kgpt2.lock import owner_gone

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        assert not owner_gone(f".ckpt-7.tmp-{live.pid}-abc")
        assert owner_gone(f".ckpt-7.tmp-{dead.pid}-abc") and owner_gone(f".ckpt-7.tmp-{os.getpid()}-abc")
        assert not owner_gone(f".trash-ckpt-4-{live.pid}") and owner_gone(f".trash-ckpt-4-{dead.pid}")
        assert not owner_gone(".ckpt-7.tmp-abc")  # no owner in the name: not ours to remove
    finally:
        live.kill()
        live.wait()


# -- kills at named points, then resume ----------------------------------------------------
@pytest.mark.slow
def test_kills_at_named_points_lose_nothing(tmp_path, reference, tiny_preset, pydoc_shards, tiny_overrides, kgpt2_cli,
                                           assert_tensorboard_shows_steps):
    args = train_args(tmp_path, tiny_preset, pydoc_shards, tiny_overrides)
    run = tmp_path / "r"
    for point in ("mid-checkpoint", "after-checkpoint", "mid-cleanup"):
        before = tree_hashes(run, skip=("logs", ".lock")) if run.exists() else {}
        out = cli(*args, env={"KGPT2_FAULT_POINT": point})
        assert out.returncode == -signal.SIGKILL, (point, out.stderr)
        after = tree_hashes(run, skip=("logs", ".lock"))
        kept = {k: v for k, v in before.items() if k.startswith("ckpt-") and (run / k).exists()}
        assert all(after[k] == v for k, v in kept.items())  # checkpoints still there are untouched
        for c in CheckpointManager(run).list():
            assert CheckpointManager(run).damage(c) is None, (point, c.id)
        if point == "mid-checkpoint":
            assert list(run.glob(".ckpt-*.tmp-*")) and not CheckpointManager(run).list()
        if point == "after-checkpoint":
            assert not (run / "stage-1.weights.h5").exists()  # the kill came before it was published
        if point == "mid-cleanup":
            assert list(run.glob(".trash-ckpt-*"))
    out = kgpt2_cli("-q", *args)  # the resume: in this process
    assert out.returncode == 0, out.stderr
    assert_same_weights(final_weights(run), final_weights(reference))
    assert sorted(p.name for p in run.glob("stage-*.weights.h5")) == ["stage-1.weights.h5", "stage-2.weights.h5"]
    assert not list(run.glob(".ckpt-*")) and not list(run.glob(".trash-*"))  # the dead owners' leftovers
    assert_tensorboard_shows_steps(run)  # the killed processes' repeated steps shown once, the resume's


# -- full disk, read-only folder, a file where a folder is ---------------------------------
def _rolled_back(run: Path) -> None:
    """Forget stage 2 (its checkpoints and export) so the next train has work to do."""
    for c in CheckpointManager(run).list():
        if c.state["stage"] >= 2 or not c.state.get("stage_end"):
            shutil.rmtree(c.path)
    (run / "stage-2.weights.h5").unlink()


@pytest.mark.slow
def test_full_disk_is_one_sentence_and_keeps_the_last_checkpoint(copied_run, tiny_preset, pydoc_shards, tiny_overrides,
                                                                  kgpt2_cli, tmpfs):
    _rolled_back(copied_run)
    used = sum(p.stat().st_size for p in copied_run.rglob("*") if p.is_file())
    mnt = tmpfs("disk", size=str(used + (256 << 10)))  # the run and 256 KiB more: full mid-stage
    shutil.copytree(copied_run, mnt / "r")
    before = tree_hashes(mnt / "r", skip=("logs", ".lock"))
    out = kgpt2_cli("-q", *train_args(mnt, tiny_preset, pydoc_shards, tiny_overrides))
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "disk is full" in out.stderr or "No space left" in out.stderr
    assert "the last good checkpoint ckpt-" in out.stderr
    after = tree_hashes(mnt / "r", skip=("logs", ".lock"))
    before.pop("config.json"), after.pop("config.json")  # it records where the run is now: it was moved
    assert {k: after.get(k) for k in before} == before
    assert not list((mnt / "r").glob(".ckpt-*"))


def test_running_out_of_memory_is_one_sentence(tmp_path, tiny_preset, pydoc_shards, tiny_overrides):
    """A batch the machine cannot hold: the step's out-of-memory error becomes one sentence (exit 2) saying what
    to change, not a traceback. A real `kgpt2 train` in a process whose address space is capped at 10 GB, so the
    allocation fails there instead of filling this machine."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (10 << 30, 10 << 30))

    args = train_args(tmp_path, tiny_preset, pydoc_shards, tiny_overrides, run="big")
    args += ["train.batch_size=20000", "data.sequence_length=64", "train.eval_every=0"]  # ~6 GB estimated
    out = subprocess.run([sys.executable, "-m", "kgpt2.cli", "-q", *args], capture_output=True, text=True,
                         preexec_fn=cap, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith(f"kgpt2: error: training run '{tmp_path / 'big'}' ran out of memory (")
    assert "lower train.batch_size" in error and "train.remat = true" in error
    # before it, only the warning that a batch of 20,000 windows is nearly all padding on this tiny corpus
    assert [line for line in out.stderr.strip().splitlines()[:-1] if "positions are padding" not in line] == []


@pytest.mark.parametrize("verb", ["align", "evaluate"])
def test_every_verb_says_out_of_memory_in_one_sentence(verb, tmp_path, monkeypatch, kgpt2_cli):
    """The command line turns the backend's out-of-memory error of any verb into one sentence and exit 2 (the
    real allocation failure is the test above, through train); other errors still raise."""
    import kgpt2.align
    import kgpt2.evaluate

    def run_out(*_, **__):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 3.20GiB\nmore detail")

    monkeypatch.setattr({"align": kgpt2.align, "evaluate": kgpt2.evaluate}[verb],
                        {"align": "align", "evaluate": "evaluate_run"}[verb], run_out)
    args = ["align", "align.data=p.jsonl"] if verb == "align" else ["evaluate", "--run", tmp_path]
    out = kgpt2_cli(*args, cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith(f"kgpt2: error: kgpt2 {verb} ran out of memory (RESOURCE_EXHAUSTED: Out of memory "
                                 "while trying to allocate 3.20GiB); ")
    assert ("train.batch_size" in out.stderr) == (verb == "align")


@pytest.mark.slow
def test_read_only_run_folder_is_one_sentence(copied_run, tiny_preset, pydoc_shards, tiny_overrides, kgpt2_cli, read_only):
    _rolled_back(copied_run)
    before = tree_hashes(copied_run)
    run = read_only(copied_run)  # root: a read-only bind mount (EROFS); a user: chmod (EACCES)
    out = kgpt2_cli("-q", *train_args(run.parent, tiny_preset, pydoc_shards, tiny_overrides, run=run.name))
    assert out.returncode == 2, out.stderr
    assert f"training run '{run}' failed at '{run}/" in out.stderr
    assert ("the file system is read-only; use a writable folder" if os.geteuid() == 0 else
            "permission denied; make it writable for you or use another folder") in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert tree_hashes(copied_run) == before


def test_a_file_where_the_logs_folder_should_be(copied_run, tiny_preset, pydoc_shards, make_tiny_config):
    from kgpt2.train import train

    _rolled_back(copied_run)
    shutil.rmtree(copied_run / "logs")
    (copied_run / "logs").write_text("my notes\n")
    before = tree_hashes(copied_run)
    cfg = make_tiny_config(copied_run.parent, tiny_preset, pydoc_shards, "run=r", *PLAN)
    with pytest.raises(UserError, match=r"failed at '.*logs.*': a file is in the way; move that file away"):
        train(cfg, verbose=0)
    after = tree_hashes(copied_run)
    before.pop("config.json"), after.pop("config.json")  # it records where the run is now: it was copied
    assert after == before


# -- fp16 loss scale -------------------------------------------------------------------------
def test_mixed_float16_resume_is_exact_with_its_loss_scale(tmp_path, tiny_preset, pydoc_shards, make_tiny_config,
                                                          backend, monkeypatch):
    import keras

    import kgpt2.train
    from kgpt2.train import train

    fp16 = [*PLAN, "train.precision=mixed_float16"]  # Keras wraps the optimizer in a LossScaleOptimizer
    if backend == "jax":  # XLA on CPU has no fp16 matmul: float32 maths, the optimizer wrapped as compile does
        fp16[-1] = "train.precision=float32"
        real_compile = kgpt2.train.compile_for_training
        monkeypatch.setattr(kgpt2.train, "compile_for_training", lambda model, cfg, optimizer, *rest: real_compile(
            model, cfg, keras.optimizers.LossScaleOptimizer(optimizer), *rest))
    cfg = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=a", *fp16)
    train(cfg, verbose=0)
    stage_end = [c for c in CheckpointManager(cfg.run_dir).list() if c.state.get("stage_end")][0]
    with np.load(stage_end.path / "optimizer.npz") as o:
        assert {"step_counter", "dynamic_scale"} <= set(o.files)
        scale = float(o["dynamic_scale"])
    shutil.copytree(cfg.run_dir, tmp_path / "b")
    _rolled_back(tmp_path / "b")  # back to the stage-1 end: stage 2 again from there
    resumed = make_tiny_config(tmp_path, tiny_preset, pydoc_shards, "run=b", *fp16)
    train(resumed, verbose=0)
    assert_same_weights(final_weights(tmp_path / "b"), final_weights(cfg.run_dir))
    with np.load(CheckpointManager(tmp_path / "b").newest_intact().path / "optimizer.npz") as b, \
            np.load(CheckpointManager(cfg.run_dir).newest_intact().path / "optimizer.npz") as a:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert scale > 0


def test_a_file_system_without_locks_trains_with_a_warning(tmp_path, monkeypatch, caplog):
    """flock on an NFS mount without its lock daemon answers ENOLCK: that stopped every `kgpt2 train` there with
    "failed at '<run>/.lock'", which the user cannot fix. Now a warning; another OS error still stops it."""
    import errno

    from kgpt2 import lock

    def flock_says(code):
        def flock(fd, op):
            raise OSError(code, os.strerror(code))
        return flock

    monkeypatch.setattr(lock.fcntl, "flock", flock_says(errno.ENOLCK))
    with caplog.at_level(logging.WARNING, logger="kgpt2"), lock.RunLock(tmp_path) as held:
        assert held.holder()["pid"] == os.getpid()
    assert "does not support file locks (No locks available)" in caplog.text
    monkeypatch.setattr(lock.fcntl, "flock", flock_says(errno.EIO))
    with pytest.raises(OSError, match="Input/output error"):
        lock.RunLock(tmp_path / "other").acquire()
