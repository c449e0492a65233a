"""`kgpt2 recipes --copy NAME DEST`: DEST is read as `cp` reads it, and only recipe names are copied."""

import pytest

from kgpt2.cli import main
from kgpt2.recipes import HERE

pytestmark = pytest.mark.backend_neutral  # file copying, no model


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_trailing_slash_names_a_folder_never_a_file(tmp_path, monkeypatch, capsys):
    """`newdir/` used to become a FILE called newdir; cp refuses a missing folder, and so does kgpt2."""
    monkeypatch.chdir(tmp_path)
    rc, _, err = cli(capsys, "recipes", "--copy", "pubmed_lora", "newdir/")
    assert rc == 2 and "folder 'newdir/' does not exist" in err and "mkdir -p newdir/" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []  # nothing written, no stray temporary

    (tmp_path / "newdir").mkdir()  # an existing folder, with or without the slash, gets NAME.toml inside
    rc, out, _ = cli(capsys, "recipes", "--copy", "pubmed_lora", "newdir/")
    copied = tmp_path / "newdir" / "pubmed_lora.toml"
    assert rc == 0 and copied.read_bytes() == (HERE / "pubmed_lora.toml").read_bytes()
    assert "--config newdir/pubmed_lora.toml" in out
    rc, _, err = cli(capsys, "recipes", "--copy", "pubmed_lora", "newdir")  # finds the copy there: kept
    assert rc == 2 and "'newdir/pubmed_lora.toml' already exists" in err
    assert sorted(p.name for p in (tmp_path / "newdir").iterdir()) == ["pubmed_lora.toml"]

    (tmp_path / "mine.toml").write_text("run = 'mine'\n")  # a file given with a slash: still never replaced
    rc, _, err = cli(capsys, "recipes", "--copy", "dpo", "mine.toml/")
    assert rc == 2 and "'mine.toml' is a file, not a folder" in err
    assert (tmp_path / "mine.toml").read_text() == "run = 'mine'\n"


def test_only_recipe_names_are_copied_not_other_files(tmp_path, monkeypatch, capsys):
    """A path given as NAME copied whatever .toml file it named (a project's pyproject.toml, say)."""
    monkeypatch.chdir(tmp_path)
    pyproject = tmp_path / "elsewhere" / "pyproject.toml"
    pyproject.parent.mkdir()
    pyproject.write_text("[project]\nname = 'x'\n")
    rc, _, err = cli(capsys, "recipes", "--copy", str(pyproject.with_suffix("")), "out.toml")
    assert rc == 2 and "is neither a config file nor a kgpt2 recipe" in err
    assert not (tmp_path / "out.toml").exists()
