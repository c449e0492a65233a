"""Recipes inside the package: listed, loaded by name from any folder, copied out, and shipped in the wheel."""

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

import kgpt2
from kgpt2.cli import main
from kgpt2.config import load_config

pytestmark = pytest.mark.backend_neutral  # the packaged recipes (config files)

PACKAGE_RECIPES = Path(kgpt2.__file__).parent / "recipes"
REPO = Path(__file__).resolve().parents[1]


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_every_recipe_is_listed_with_its_first_comment_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    files = sorted(PACKAGE_RECIPES.glob("*.toml"))
    assert {f.stem for f in files} >= {"alpaca", "dpo", "pubmed_full", "pubmed_lora", "qlora",
                                       "shakespeare_bpe", "shakespeare_char"}
    rc, out, _ = cli(capsys, "recipes")
    assert rc == 0
    listed = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()[: len(files)]}
    assert list(listed) == [f.stem for f in files]
    for f in files:
        first = f.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# ") and listed[f.stem] == first[2:].strip()
        tomllib.loads(f.read_text(encoding="utf-8"))  # valid TOML
        assert load_config(f.stem).to_dict() == load_config(f).to_dict()  # and a valid config


def test_a_recipe_loads_by_name_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("pubmed_lora", ["train.batch_size=4"])
    assert (cfg.run, cfg.lora.rank, cfg.train.batch_size) == ("pubmed-lora", 8, 4)
    assert cfg.train.stages == [10, 10000, 80000, "rest"]
    # a path still works, and a file of that name wins over the recipe
    (tmp_path / "mine.toml").write_text('run = "mine"\n')
    assert load_config("mine.toml").run == "mine"
    (tmp_path / "pubmed_lora").write_text('run = "local"\n')
    assert load_config("pubmed_lora").run == "local"


def test_copy_out_then_refuse_to_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    original = (PACKAGE_RECIPES / "pubmed_lora.toml").read_bytes()
    rc, out, _ = cli(capsys, "recipes", "--copy", "pubmed_lora")
    assert rc == 0 and "pubmed_lora.toml" in out
    copy = tmp_path / "pubmed_lora.toml"
    assert copy.read_bytes() == original
    copy.write_text('run = "edited"\n')  # the user's edit must survive a second copy
    rc, _, err = cli(capsys, "recipes", "--copy", "pubmed_lora")
    assert rc == 2 and err.strip() == ("kgpt2: error: 'pubmed_lora.toml' already exists; "
                                       "give another destination (nothing was changed)")
    assert copy.read_text() == 'run = "edited"\n'
    (tmp_path / "edits").mkdir()
    assert cli(capsys, "recipes", "--copy", "alpaca", "edits")[0] == 0  # into a folder
    assert (tmp_path / "edits" / "alpaca.toml").read_bytes() == (PACKAGE_RECIPES / "alpaca.toml").read_bytes()
    rc, out, _ = cli(capsys, "recipes", "--copy", "dpo", "edits/my-dpo.toml")  # to a file name
    assert rc == 0 and out.endswith("use it with: kgpt2 align --config edits/my-dpo.toml\n")  # dpo aligns
    assert load_config("edits/my-dpo.toml").to_dict() == load_config("dpo").to_dict()
    rc, _, err = cli(capsys, "recipes", "--copy", "dpo", "missing/x.toml")
    assert rc == 2 and "folder 'missing' does not exist" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["alpaca.toml", "edits", "my-dpo.toml", "pubmed_lora.toml"]


@pytest.mark.parametrize("args, message", [
    (["train", "--config", "pubmed_lor", "--dry-run"],
     "'pubmed_lor' is neither a config file nor a kgpt2 recipe; did you mean pubmed_lora or pubmed_full?"),
    (["recipes", "--copy", "shakespeare"], "did you mean shakespeare_bpe or shakespeare_char?"),
    (["train", "--config", "zzz"], "recipes: alpaca, chat, dpo, pubmed_full"),
    (["train", "--config", "configs/pubmed_lora.toml"],  # where recipes used to be
     "config file 'configs/pubmed_lora.toml' does not exist; kgpt2 ships a recipe 'pubmed_lora': --config pubmed_lora"),
    (["recipes", "somewhere"], "DEST 'somewhere' goes with --copy NAME"),
    # a recipe given to the other verb: named as such, and no run folder left behind
    (["train", "--config", "dpo"], "this is an alignment config (it sets align.data, not data.shards): run `kgpt2 "
                                   "align` with it"),
    (["align", "--config", "alpaca"], "This is a training config (it sets data.shards): run `kgpt2 train` with it."),
])
def test_unknown_names_are_one_sentence_and_exit_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(capsys, *args)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("kgpt2: error: ") and message in err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_recipes_work_from_the_installed_wheel(tmp_path, wheel_venv, pydoc_shards):
    """The built wheel in a fresh venv (conftest's `wheel_venv`) lists and uses recipes from a folder outside
    the checkout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a checkout on the path would hide the wheel
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([wheel_venv / "bin" / "python", "-c", "import kgpt2; print(kgpt2.__file__)"],
                           capture_output=True, text=True, cwd=work, env=env, check=True).stdout.strip()
    assert Path(where).is_relative_to(wheel_venv), where
    kgpt2_cmd = wheel_venv / "bin" / "kgpt2"
    listing = subprocess.run([kgpt2_cmd, "recipes"], capture_output=True, text=True, cwd=work, env=env, timeout=300)
    assert listing.returncode == 0, listing.stderr
    assert {line.split()[0] for line in listing.stdout.splitlines() if line and not line.startswith(("use", "edit"))} == {
        p.stem for p in (REPO / "kgpt2" / "recipes").glob("*.toml")}
    dry = subprocess.run([kgpt2_cmd, "train", "--config", "pubmed_lora", "--dry-run", f"data.shards={pydoc_shards}",
                          "data.sequence_length=32"], capture_output=True, text=True, cwd=work, env=env, timeout=300)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0] == "stage plan [10, 10000, 80000, 'rest']" and lines[1].startswith("why: the corpus has ")
    assert [int(line.split()[0]) for line in lines[3:7]] == [1, 2, 3, 4]
    assert not list(work.iterdir())


def test_copy_into_a_read_only_folder_is_one_sentence(tmp_path, monkeypatch, capsys):
    """A read-only folder refused the temporary file, then its clean-up too: the second error's traceback
    (exit 1) replaced the sentence. (Root ignores chmod: the file system's refusals are stood in for.)"""
    import errno

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Path, "write_text", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    rc, _, err = cli(capsys, "recipes", "--copy", "dpo", "x.toml")
    assert (rc, err) == (2, "kgpt2: error: cannot write 'x.toml': Read-only file system\n")
