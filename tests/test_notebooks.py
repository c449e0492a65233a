"""The Colab notebooks (notebooks/*.ipynb): committed clean, and they run top to bottom.

Each notebook is executed in smoke mode (`KGPT2_SMOKE=1`: the tiny offline
model and data, short loops) with nbclient, in a temporary working directory
outside the checkout, in a kernel of a fresh venv that holds kgpt2 installed
from its built wheel (the `wheel_venv` fixture), as a Colab user has it; any
cell error fails the test. The quick checks (no outputs committed, the Colab badge, the install
and GPU-check cells) run on every backend; the executions are `slow`.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_neutral  # the notebooks, run as a user runs them

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ["01_quickstart.ipynb", "02_pubmed_staged_finetune.ipynb", "03_alpaca_lora.ipynb",
            "04_shakespeare_from_scratch.ipynb", "05_dpo_from_demo_votes.ipynb"]
NOTEBOOKS = [NOTEBOOK_DIR / name for name in EXPECTED if (NOTEBOOK_DIR / name).is_file()]
NOTEBOOK_BACKEND = "jax"
CELL_TIMEOUT_S = 600  # per cell; the whole notebook takes well under this in smoke mode


def _read(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


def test_all_notebooks_are_there():
    missing = [name for name in EXPECTED if not (NOTEBOOK_DIR / name).is_file()]
    assert not missing, f"notebooks missing from notebooks/: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_clean_and_colab_ready(path):
    import nbformat

    nb = _read(path)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; strip them before committing"
    first_md = next(c.source for c in nb.cells if c.cell_type == "markdown")
    badge = f"https://colab.research.google.com/github/kgpt2-dev/kgpt2/blob/main/notebooks/{path.name}"
    assert badge in first_md, f"{path.name}: its first markdown cell lacks the Open in Colab badge ({badge})"
    install = code[0].source
    assert "KGPT2_SMOKE" in install and "pip" in install and "https://github.com/kgpt2-dev/kgpt2" in install
    assert any("list_gpus()" in c.source for c in code[:2]), f"{path.name}: no GPU check near the top"
    # The repository address in one variable, set in one place.
    assert sum(c.source.count("https://github.com/kgpt2-dev/kgpt2") for c in code) == 1
    # Runs on Drive, and a cell that resumes one after a disconnect.
    assert any("drive.mount" in c.source and "ROOT =" in c.source for c in code), f"{path.name}: runs not kept on Drive"
    assert any('"train", "--run"' in c.source for c in code), f"{path.name}: no resume-after-a-disconnect cell"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_top_to_bottom_in_smoke_mode(path, tmp_path, wheel_venv, shared_data):
    import json

    from nbclient import NotebookClient

    nb = _read(path)
    env = dict(os.environ, KGPT2_SMOKE="1", PYTHONUNBUFFERED="1", MPLBACKEND="module://matplotlib_inline.backend_inline",
               KGPT2_SHARED_DATA=str(shared_data))  # the wheel does not sit beside ../shared/data
    env.pop("PYTHONPATH", None)  # a checkout on the path would hide the installed wheel
    # Colab's backend: kgpt2 picks JAX when KERAS_BACKEND is unset and JAX is installed (it is on
    # Colab). It is also the cheaper one here (01: ~68 s of kernel CPU on JAX, ~91 s on TensorFlow).
    env["KERAS_BACKEND"] = NOTEBOOK_BACKEND
    # PATH as it is: the wheel's venv/bin is not on it, as in a kernel of a venv never activated; the notebooks run
    # `kgpt2` with the kernel's own Python (their `subprocess.run(["kgpt2", ...])` needed it on PATH)
    # A kernel spec for the wheel's venv (ipykernel reaches it through the venv's .pth).
    spec = tmp_path / "jupyter" / "kernels" / "kgpt2-wheel"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [str(wheel_venv / "bin" / "python"), "-m", "ipykernel_launcher",
                                                           "-f", "{connection_file}"], "display_name": "kgpt2 wheel",
                                                  "language": "python"}))
    env["JUPYTER_PATH"] = str(tmp_path / "jupyter")
    os.environ["JUPYTER_PATH"] = env["JUPYTER_PATH"]  # where nbclient's kernel manager looks the spec up
    work = tmp_path / "work"
    work.mkdir()
    client = NotebookClient(nb, kernel_name="kgpt2-wheel", timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(work)}})
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        client.execute(env=env, cwd=str(work))  # raises CellExecutionError on the first failing cell
    finally:
        os.environ.pop("JUPYTER_PATH", None)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print(f"\n{path.name}: {wall:.1f} s wall, {cpu:.1f} s CPU (kernel) in smoke mode")
    # Everything the notebook wrote landed in its working directory, not in the repository.
    assert (work / "checkpoints").is_dir(), f"{path.name} wrote no checkpoints/ under its working directory"
    install_cell = next(c for c in nb.cells if c.cell_type == "code")
    installed = "".join(o.get("text", "") for o in install_cell.outputs)
    assert str(wheel_venv) in installed, f"{path.name} ran kgpt2 from elsewhere than the installed wheel: {installed}"
