"""Shared fixtures: real data from ../shared/data and a tiny offline GPT-2.

Everything is built once per session in a temporary directory: a byte-level
BPE trained on CPython's pydoc topics, a 2-layer GPT-2 saved as a KerasHub
preset, pydoc shards, and a short 2-stage training run (`tiny_run`, loaded
once per test module as `loaded`). Tests take these as fixtures
(`make_tiny_config`, `tiny_overrides`), never by importing this file; the
kill-and-resume tests take `start_cli`, `kill_and_resume` and `latest_weights`; the serve
tests `start_server` (a `kgpt2 serve` subprocess).
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kgpt2  # noqa: F401  (chooses the Keras backend first)
from kgpt2.backend import import_keras_quietly

# gradio_client's Client.close() joins its heartbeat thread for up to 1 s, and the thread sees the close only
# when the server's next heartbeat line arrives: 15 s apart by default, so every close waited the full second
# (~20 in test_demo, 40 in the load test). GRADIO_HEARTBEAT_INTERVAL is gradio's documented setting for it;
# 0.25 s is the interval gradio's own end-to-end tests use. Read by the server per heartbeat request, so it
# holds for every demo served in this process or started from it.
os.environ.setdefault("GRADIO_HEARTBEAT_INTERVAL", "0.25")


def _share_xla_compiles() -> None:
    """One XLA compilation cache of each backend for this test process and the processes it starts (CLI runs,
    servers and notebook kernels inherit the environment).

    Many tests compile the tiny model's same programs again: every `kgpt2 serve` on TensorFlow warms up the same
    8 decode/prefill programs (tests/test_serve_log.py's quiet-server test: 52 s in a clean-clone run without the
    cache, 28 s with it, session 16), and every run trained on JAX compiles the same train and evaluation steps
    (a tiny `train()`: 5.8 s without the cache, 2.3 s with it, session 34). TensorFlow's persistent cache and
    JAX's (`jax_compilation_cache_dir`) both key an executable by its program, compile options and XLA flags, so
    a hit is the executable a compile would give: no test sees other numbers, only less time. JAX's takes every
    program (its default skips those compiling in under 1 s: most of the tiny model's) and a size limit, which
    turns on its file lock, so a CLI process writing an entry while another reads it is safe. Fresh for each
    pytest process (an xdist worker does not share its sibling's) and removed at its exit. Set before TensorFlow
    and JAX start (this file is imported first). `KGPT2_TEST_XLA_CACHE=0` turns both off.
    """
    import atexit
    import tempfile

    if os.environ.get("KGPT2_TEST_XLA_CACHE", "1") == "0":
        return
    cache = tempfile.mkdtemp(prefix="kgpt2-test-xla-cache-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    flags = [f for f in os.environ.get("TF_XLA_FLAGS", "").split() if "tf_xla_persistent_cache_directory" not in f]
    os.environ["TF_XLA_FLAGS"] = " ".join(flags + [f"--tf_xla_persistent_cache_directory={cache}"])
    os.environ.update({  # JAX reads these when it is imported
        "JAX_COMPILATION_CACHE_DIR": os.path.join(cache, "jax"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "JAX_COMPILATION_CACHE_MAX_SIZE": str(4 << 30),
    })


_share_xla_compiles()
# Keras and KerasHub as a `kgpt2` command imports them (on JAX without TensorFlow), before any test module does;
# after the cache settings above, which TensorFlow and JAX read when they start.
import_keras_quietly()

# tests/data holds fixtures and the scripts that made them, not tests (and
# --doctest-modules would import those scripts).
collect_ignore = ["data"]

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY_OVERRIDES = [
    "model.num_layers=2", "model.num_heads=2", "model.hidden_dim=32", "model.intermediate_dim=64",
    "model.max_sequence_length=64", "data.sequence_length=32",
    "train.batch_size=8", "train.epochs=1", "train.learning_rate=0.003", "train.warmup_steps=2",
    "train.eval_batches=2", "train.precision=float32", "train.device=cpu", "lora.enabled=false",
]


@pytest.fixture(scope="module", autouse=True)
def _cheap_garbage_collection():
    """Collect, then freeze what survives (`gc.freeze`), before each test module.

    The test process holds TensorFlow, JAX, torch, transformers and gradio: millions of long-lived
    objects that every full collection walks again (1.5 s each here). Keras runs one per variable it
    deletes (`Layer.__delattr__`: 13 when the tiny model is quantised), and Python's own oldest-generation
    passes walk them too. Frozen objects are skipped by both; garbage made inside the module is still
    collected, and the collect first means nothing collectable is frozen.
    """
    gc.collect()
    gc.freeze()
    yield


@pytest.fixture(autouse=True)
def _keep_keras_global_state():
    """Put back the global Keras state a test may change (dtype policy, floatx)."""
    import keras

    policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
    yield
    keras.config.set_dtype_policy(policy)
    keras.config.set_floatx(floatx)


def _pristine_kgpt2_logger():
    import logging

    logger = logging.getLogger("kgpt2")
    return logger.handlers[:], logger.level, logger.propagate


_KGPT2_LOGGER_AT_START = _pristine_kgpt2_logger()


@pytest.fixture(autouse=True)
def _reset_kgpt2_logger_state():
    """Give every test the `kgpt2` logger as it was before any test ran: `kgpt2.cli.main` gives it a stderr
    handler, a level and propagate=False for its process, and tests that call it in-process (the kgpt2_cli
    fixture, test_journeys' and test_packed_training's helpers) hide later tests' records from caplog. Reset
    before the test as well as after, because a module-scoped fixture that runs the CLI is set up before this
    fixture and would otherwise be taken for the state to keep (CI failed that way on a request-log test)."""
    import logging

    def reset():
        logger = logging.getLogger("kgpt2")
        handlers, level, propagate = _KGPT2_LOGGER_AT_START
        logger.handlers[:], logger.propagate = handlers, propagate
        logger.setLevel(level)

    reset()
    yield
    reset()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED


@pytest.fixture(scope="session")
def gpt2_tokenizer(shared_data):
    from kgpt2.model.tokenizer import Tokenizer

    d = shared_data / "gpt2-tokenizer"
    return Tokenizer.from_files(d / "encoder.json", d / "vocab.bpe")


@pytest.fixture(scope="session")
def pydoc_tokenizer():
    from kgpt2.data.sources import open_source
    from kgpt2.model.tokenizer import Tokenizer

    return Tokenizer.train([d.text for d in open_source("pydoc")], vocab_size=512)


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory, pydoc_tokenizer) -> Path:
    """Shards of 20 short documents of 186 tokens each: a stage of one article is one batch of the tiny model's
    windows (tests that train stage by stage, in seconds)."""
    from kgpt2.data.shards import prepare

    top = tmp_path_factory.mktemp("small")
    (top / "corpus").mkdir()
    for i in range(20):
        text = f"The with statement {i} is used to wrap the execution of a block. " * 8
        (top / "corpus" / f"d{i}.txt").write_text(text, encoding="utf-8")
    prepare(str(top / "corpus"), top / "shards", pydoc_tokenizer, progress=False)
    return top / "shards"


@pytest.fixture(scope="session")
def char_shards(tmp_path_factory) -> Path:
    """Shards of 10 such documents made with a character tokenizer (not the pydoc BPE of the tiny model), 60/20/20;
    its corpus/ folder beside them. For the refusals of shards of another tokenizer."""
    from kgpt2.data.shards import prepare
    from kgpt2.model.char_tokenizer import CharTokenizer

    top = tmp_path_factory.mktemp("chars")
    (top / "corpus").mkdir()
    texts = [f"The with statement {i} is used to wrap the execution of a block. " * 8 for i in range(10)]
    for i, text in enumerate(texts):
        (top / "corpus" / f"d{i}.txt").write_text(text, encoding="utf-8")
    prepare(str(top / "corpus"), top / "shards", CharTokenizer.train(texts), fractions=(0.6, 0.2, 0.2), progress=False)
    return top / "shards"


@pytest.fixture(scope="session")
def pydoc_tokenizer_dir(tmp_path_factory, pydoc_tokenizer) -> Path:
    """`pydoc_tokenizer` saved as vocabulary.json + merges.txt, for `--tokenizer DIR`."""
    return pydoc_tokenizer.save(tmp_path_factory.mktemp("tokenizer") / "pydoc")


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory, pydoc_tokenizer) -> Path:
    """A 2-layer, 32-wide GPT-2 with the pydoc BPE, saved as a KerasHub preset."""
    import keras

    from kgpt2.config import load_config
    from kgpt2.model.models import build_backbone, save_preset

    cfg = load_config(None, TINY_OVERRIDES + ["model.preset=scratch", f"model.vocabulary_size={pydoc_tokenizer.vocab_size}"])
    keras.utils.set_random_seed(0)
    return save_preset(build_backbone(cfg.model), pydoc_tokenizer, tmp_path_factory.mktemp("preset") / "tiny")


@pytest.fixture(scope="session")
def pydoc_shards(tmp_path_factory, pydoc_tokenizer) -> Path:
    from kgpt2.data.shards import prepare

    out = tmp_path_factory.mktemp("shards") / "pydoc"
    prepare("pydoc", out, pydoc_tokenizer, fractions=(0.8, 0.1, 0.1), progress=False)
    return out


def _tiny_config(root, preset, shards, *extra):
    from kgpt2.config import MODEL_SHAPE_KEYS, load_config

    # A preset brings its own shape (shape keys are refused for it): the tiny shape goes to "scratch" only
    shape = tuple(f"model.{k}=" for k in MODEL_SHAPE_KEYS)
    base = TINY_OVERRIDES if str(preset) == "scratch" else [o for o in TINY_OVERRIDES if not o.startswith(shape)]
    return load_config(None, base + [f"checkpoints_root={root}", f"model.preset={preset}",
                                     f"data.shards={shards}", *extra])


@pytest.fixture(scope="session")
def make_tiny_config():
    """`make_tiny_config(root, preset, shards, *overrides)`: a Config for the tiny model."""
    return _tiny_config


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """The tiny model's `key=value` overrides (a copy: tests may extend it)."""
    return list(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_preset, pydoc_shards) -> Path:
    """A finished 2-stage run (a few steps per stage) to evaluate, generate and demo."""
    from kgpt2.train import train

    root = tmp_path_factory.mktemp("runs")
    cfg = _tiny_config(root, tiny_preset, pydoc_shards, "run=tiny", 'train.stages=[5, 10]')
    train(cfg, verbose=0)
    return cfg.run_dir


@pytest.fixture(scope="session")
def assert_tensorboard_shows_steps():
    """`assert_tensorboard_shows_steps(run)`: TensorBoard's own reader (EventAccumulator) shows each step of the
    run's step CSV once, with the CSV's loss and learning rate, and nothing else."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kgpt2.training.run_logs import read_steps

    def check(run: Path) -> None:
        board = EventAccumulator(str(run / "logs" / "tensorboard"))
        board.Reload()
        steps = read_steps(run)
        assert sorted(board.Tags()["scalars"]) == ["accuracy", "learning_rate", "loss"]
        for tag in ("loss", "learning_rate"):
            shown = board.Scalars(tag)
            assert [e.step for e in shown] == steps["step"].tolist(), tag
            assert [e.value for e in shown] == pytest.approx(steps[tag].tolist(), rel=1e-5), tag

    return check


@pytest.fixture(scope="module")
def loaded(tiny_run):
    """(model, tokenizer, cfg) of `tiny_run` at its latest checkpoint, loaded once per test module."""
    from kgpt2.run import load_model

    return load_model(tiny_run, "latest")


def _start_cli(verb: str, args) -> subprocess.Popen:
    """`kgpt2 -q VERB ARGS` in a subprocess: stdout dropped, stderr kept for a failure's message."""
    return subprocess.Popen([sys.executable, "-m", "kgpt2.cli", "-q", verb, *args],
                            env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_after_checkpoint(proc: subprocess.Popen, run_dir: Path, wait_s: float | None) -> bool:
    """SIGKILL `proc` `wait_s` seconds after a checkpoint appears in `run_dir` (None: the moment a save
    begins); True if it was killed, False if it ended first."""
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if wait_s is None:
            if any(run_dir.glob(".ckpt-*.tmp-*")):
                break
            time.sleep(0.0005)
        elif any(run_dir.glob("ckpt-*")):
            time.sleep(wait_s)
            break
        else:
            time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return killed


def _kill_and_resume(verb: str, args, run_dir, waits, check=lambda: None) -> int:
    """Run `kgpt2 VERB ARGS` once per entry of `waits`, killed that long after its first checkpoint
    (`_kill_after_checkpoint`), calling `check()` after each; then once more to the end, which must
    succeed. Returns how many runs were killed."""
    kills = 0
    for wait_s in waits:
        kills += _kill_after_checkpoint(_start_cli(verb, args), Path(run_dir), wait_s)
        check()
    final = _start_cli(verb, args)
    assert final.wait(timeout=600) == 0, final.stderr.read()
    return kills


def _latest_weights(run_dir) -> tuple[int, dict]:
    """(step, {array name: array}) of the run's newest intact checkpoint."""
    import numpy as np

    from kgpt2.training.checkpoints import CheckpointManager

    ckpt = CheckpointManager(run_dir).latest()
    with np.load(ckpt.path / "weights.npz") as w:
        return ckpt.step, {k: w[k] for k in w.files}


@pytest.fixture(scope="session")
def start_cli():
    """`start_cli(verb, args)`: `kgpt2 -q VERB ARGS` started in a subprocess (a Popen; stderr piped)."""
    return _start_cli


@pytest.fixture
def kgpt2_cli(capfd, monkeypatch):
    """`kgpt2_cli(*argv, cwd=None, env=None)`: `kgpt2 ARGV` run by `kgpt2.cli.main` in this process, from
    `cwd`, with `env` added to the environment; returns its `returncode`, `stdout` and `stderr` as a finished
    subprocess has them (argparse's exits, --help and usage errors, give their status too).

    A `python -m kgpt2.cli` subprocess spends ~15 s importing TensorFlow again before doing anything; tests
    about the process itself (kills, signals, two processes at once, a fresh interpreter's imports, the
    `python -m` entry point) keep one. capfd, not capsys: it also catches what native code writes to the
    file descriptors, so "one line on stderr" is checked as strictly as a subprocess's would be.
    """
    from types import SimpleNamespace

    from kgpt2.cli import main

    def run(*argv, cwd=None, env=None):
        with monkeypatch.context() as m:
            if cwd is not None:
                m.chdir(cwd)
            for k, v in (env or {}).items():
                m.setenv(k, v)
            capfd.readouterr()
            try:
                code = main([str(a) for a in argv])
            except SystemExit as e:  # argparse: --help (0) and usage errors (2)
                code = e.code if isinstance(e.code, int) else 1
            out, err = capfd.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


@pytest.fixture(scope="session")
def kill_and_resume():
    """`kill_and_resume(verb, args, run_dir, waits, check)`: kill a run at checkpoints, then finish it;
    returns the number of kills."""
    return _kill_and_resume


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, its checksum broken
    path.write_bytes(bytes(data))


@pytest.fixture(scope="session")
def flip_bytes():
    """`flip_bytes(path)`: one byte in the middle of the file changed, its size kept (a checkpoint file damaged
    so that only its checksum tells)."""
    return _flip_bytes


@pytest.fixture(scope="session")
def latest_weights():
    """`latest_weights(run_dir)`: (step, {name: array}) of its newest intact checkpoint."""
    return _latest_weights


@pytest.fixture
def backend() -> str:
    import keras

    return keras.backend.backend()


TESTS = Path(__file__).resolve().parent
BACKEND_MARKS = {"backend", "backend_neutral"}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: a file without a mark must not drop out unseen
def pytest_collection_modifyitems(config, items):
    """Every test file declares `pytestmark = pytest.mark.backend` or `pytest.mark.backend_neutral`.

    `make test` runs every file on JAX (the backend kgpt2 picks when KERAS_BACKEND is unset) and the
    `backend` ones again on TensorFlow (those not marked slow; a test of a `backend_neutral` file that needs
    TensorFlow marks itself `backend`). The rule is "every
    file says which", not a guess from its imports: many tests train or generate through the CLI or a
    subprocess without importing Keras, so no import rule would spot them, and a new file that forgets
    the line would silently skip TensorFlow. Refusing it at collection makes the author choose. The modules'
    docstring examples (--doctest-modules kgpt2) count as `backend`: they are quick and build models.
    """
    undeclared = set()
    for item in items:
        if item.path.parent != TESTS:
            item.add_marker(pytest.mark.backend)
            continue
        module = item.getparent(pytest.Module)
        if len({m.name for m in module.own_markers} & BACKEND_MARKS) != 1:
            undeclared.add(item.path.name)
    if undeclared:
        raise pytest.UsageError(
            f"{', '.join(sorted(undeclared))}: declare exactly one of `pytestmark = pytest.mark.backend` (the "
            "outcome depends on the Keras backend; also runs on TensorFlow) or `pytest.mark.backend_neutral` (runs "
            "once, on JAX) at the top of the file")


def pytest_report_header(config):
    return f"KERAS_BACKEND={os.environ.get('KERAS_BACKEND')}"


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory) -> Path:
    """A fresh venv with kgpt2 installed from its built wheel (not editable), built once per session.

    The heavy dependencies come from this interpreter's site-packages, listed in a .pth file: a folder
    named in a .pth is put on the path without running its own .pth files, so the editable kgpt2 of
    the development venv stays out (`python -m venv --system-site-packages` would not see them from a venv).
    """
    import site
    import subprocess
    import sys
    import sysconfig

    tmp = tmp_path_factory.mktemp("wheel-venv")
    repo = Path(__file__).resolve().parents[1]
    # Built from a copy of what the wheel holds: setuptools writes build/ and *.egg-info into the folder it
    # builds, and two test workers (pytest -n 2) building in the checkout at once would share them.
    source = tmp / "source"
    shutil.copytree(repo / "kgpt2", source / "kgpt2", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(repo / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "wheels"), str(source)], check=True, timeout=300, cwd=tmp)
    (wheel,) = (tmp / "wheels").glob("kgpt2-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a checkout on the path would hide the wheel
    own = Path(subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                       text=True, env=env).strip())
    (own / "deps.pth").write_text("\n".join(site.getsitepackages() or [sysconfig.get_path("purelib")]) + "\n")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
                   check=True, timeout=300, cwd=tmp, env=env)
    where = subprocess.check_output([py, "-c", "import kgpt2; print(kgpt2.__file__)"], text=True, cwd=tmp, env=env).strip()
    assert where.startswith(str(venv)), f"kgpt2 imported from {where}, not from the wheel in {venv}"
    return venv



@pytest.fixture(scope="module")
def start_server(tiny_run, tmp_path_factory):
    """`start_server(*args, run=tiny_run)`: `kgpt2 serve` on a free loopback port, started from another
    folder; returns (process, base URL) once /health answers. The process's stderr is in the file
    `process.stderr_path` (the request log lines), its stdout beside it. Every started server is killed
    at the end of the module."""
    import socket

    import httpx

    started = []

    def start(*args, run=tiny_run):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        folder = tmp_path_factory.mktemp("serve")
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        with open(folder / "stdout.txt", "w") as out, open(folder / "stderr.txt", "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "kgpt2.cli", "serve", "--run", str(run), "--port",
                                     str(port), *args], cwd=folder, env=env, stdout=out, stderr=err)
        proc.stderr_path = folder / "stderr.txt"
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):  # bounded: 120 s to load and compile
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}: {proc.stderr_path.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail("the server did not answer /health within 120 s")

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


@pytest.fixture(scope="session")
def hf_base(tmp_path_factory, tiny_preset, pydoc_tokenizer):
    """The tiny preset as a Hugging Face GPT-2 directory: the base PEFT adapters go on (what `export --to peft`
    writes as base/)."""
    from kgpt2.config import ModelConfig
    from kgpt2.export import write_hf
    from kgpt2.model.adapters import merged_backbone
    from kgpt2.model.models import build_backbone

    out = tmp_path_factory.mktemp("hf") / "base"
    return write_hf(merged_backbone(build_backbone(ModelConfig(preset=str(tiny_preset)))), pydoc_tokenizer, out)


@pytest.fixture
def unevaluated_run(tiny_run, tmp_path) -> Path:
    """A copy of the tiny 2-stage run without its evaluation tables (tests damage, rewrite or lock it)."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    for f in copy.glob("evaluation-*"):
        f.unlink()
    return copy


@pytest.fixture
def read_only():
    """`read_only(folder)`: `folder` made read-only until the test ends: chmod for a user; root ignores chmod, so
    for root a read-only bind mount of the folder over itself (skipped where mounting is not allowed)."""
    undo = []

    def make(folder: Path) -> Path:
        if os.geteuid() != 0:
            paths = [folder, *folder.rglob("*")]
            for p in paths:
                p.chmod(0o555 if p.is_dir() else 0o444)
            undo.append(lambda: [p.chmod(0o755 if p.is_dir() else 0o644) for p in paths])
            return folder
        done = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"root ignores chmod, and a read-only bind mount failed here: {done.stderr.strip()}")
        undo.append(lambda: subprocess.run(["umount", str(folder)], capture_output=True))
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True, capture_output=True)
        with pytest.raises(OSError):  # really read-only, even for root
            (folder / "probe").write_text("x")
        return folder

    yield make
    for step in reversed(undo):
        step()


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(name, size="1m")`: a small tmpfs mounted at tmp_path/name, unmounted after the test (root only;
    skipped elsewhere): a real full or read-only disk, which chmod cannot give root."""
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
    for d in reversed(mounts):
        subprocess.run(["umount", str(d)], capture_output=True)
