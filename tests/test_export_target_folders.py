"""`kgpt2 export` into folders the user already has: a link to an empty folder, a read-only empty folder, and a
run whose tokenizer file is cut short. Nothing the user had is replaced or moved; a refusal is one sentence, exit 2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.backend


def test_export_to_a_link_fills_the_linked_folder_and_keeps_the_link(tiny_run, tmp_path, kgpt2_cli):
    # `exports -> /big/disk/exports`: before, the link was renamed to .trash-out-PID and a real folder took its place
    target = tmp_path / "disk" / "exports"
    target.mkdir(parents=True)
    (tmp_path / "out").symlink_to(target)
    result = kgpt2_cli("export", "--run", tiny_run, "--to", "preset", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").is_symlink() and os.readlink(tmp_path / "out") == str(target)
    assert (target / "kgpt2_export.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "out"]  # no .trash-out-* left beside it


def test_export_into_a_read_only_empty_folder_is_refused_and_the_folder_kept(tiny_run, tmp_path):
    # before, the empty read-only folder was swapped for a new writable one holding the export
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    argv = [sys.executable, "-c", "import sys; from kgpt2.cli import main; sys.exit(main(sys.argv[1:]))",
            "export", "--run", str(tiny_run), "--to", "hf", str(ro)]
    if os.geteuid() == 0:  # root writes anywhere: drop that privilege, as an ordinary user has none
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop the override of file modes")
        argv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *argv]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=240)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [f"kgpt2: error: export target '{ro}' is a read-only folder; "
                                                      "make it writable for you or choose another"]
        assert (ro.stat().st_mode & 0o777) == 0o555 and not any(ro.iterdir())
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"]
    finally:
        ro.chmod(0o755)


def test_a_cut_short_merges_file_is_one_sentence(pydoc_tokenizer, tmp_path):
    from kgpt2.errors import UserError
    from kgpt2.model.tokenizer import Tokenizer

    folder = pydoc_tokenizer.save(tmp_path / "tok")
    merges = folder / "merges.txt"
    text = merges.read_text(encoding="utf-8")
    cut = text[: text.index("\n", 200) + 3].rstrip("\n")  # ends in the middle of a merge line: "a b" cut to "a "
    merges.write_text(cut + (" " if not cut.endswith(" ") else ""), encoding="utf-8")
    # before: tokenizers' "Exception: Error while initializing BPE: Token `` out of vocabulary" and a traceback
    with pytest.raises(UserError, match=r"tokenizer file '.*merges.txt' does not fit its vocabulary .* damaged"):
        Tokenizer.from_dir(folder)
