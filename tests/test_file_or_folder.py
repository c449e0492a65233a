"""A path that exists but is a file where a folder is expected (or the reverse) is named as such, not as missing.

"does not exist" for a file the user can see sends them looking for a typo that is not there.
"""

import pytest

pytestmark = pytest.mark.backend_neutral  # path checks of prepare's tokenizer and preset, and recipes' copy


@pytest.fixture
def folder(tmp_path):
    """tmp_path with a corpus, a plain file `notes.txt` and a folder `tok/vocab.json` (a folder named like a file)."""
    (tmp_path / "c.txt").write_text("hello world")
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "tok" / "vocab.json").mkdir(parents=True)
    (tmp_path / "tok" / "merges.txt").write_text("#version: 0.2\n")
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["--preset", "notes.txt"], "model preset directory 'notes.txt' is a file, not a folder; to work offline"),
    (["--preset", "./notes.txt"], "model preset directory './notes.txt' is a file, not a folder; to work offline"),
    (["--tokenizer", "notes.txt/tok"], "tokenizer folder 'notes.txt/tok' cannot exist: 'notes.txt' is a file, "
                                       "not a folder"),
], ids=["preset-name", "preset-path", "tokenizer-under-a-file"])
def test_a_file_given_as_a_folder_is_called_a_file(folder, kgpt2_cli, args, message):
    result = kgpt2_cli("prepare", "--source", "c.txt", "--out", "shards", *args, cwd=folder)
    assert result.returncode == 2 and result.stderr.startswith(f"kgpt2: error: {message}"), result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (folder / "shards").exists()


def test_a_folder_given_as_a_tokenizer_file_is_called_a_folder(folder):
    from kgpt2.errors import UserError
    from kgpt2.model.tokenizer import Tokenizer

    with pytest.raises(UserError) as caught:
        Tokenizer.from_files(folder / "tok" / "vocab.json", folder / "tok" / "merges.txt")
    assert str(caught.value) == f"tokenizer file '{folder / 'tok' / 'vocab.json'}' is a folder, not a file"


@pytest.mark.parametrize("dest, message", [
    ("notes.txt/", "'notes.txt' is a file, not a folder; give a folder or a new file name"),
    ("notes.txt/dpo.toml", "'notes.txt' is a file, not a folder"),
    ("missing/dpo.toml", "folder 'missing' does not exist"),  # really missing: still said so
])
def test_recipes_copy_into_a_file_says_it_is_a_file(folder, kgpt2_cli, dest, message):
    result = kgpt2_cli("recipes", "--copy", "dpo", dest, cwd=folder)
    assert (result.returncode, result.stderr) == (2, f"kgpt2: error: {message}\n")
    assert (folder / "notes.txt").read_text() == "keep me"
