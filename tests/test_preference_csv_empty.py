"""`kgpt2 align` given a preference CSV with no rows is told so in CSV terms.

Before: "'prefs.csv' holds no preference records (give JSON or JSON Lines records with prompt, chosen and
rejected)", for a CSV whose header was right and whose rows were missing.
"""

import gzip

import pytest

pytestmark = pytest.mark.backend_neutral  # refused while the files are read, before any model is built

ADVICE = "(give a row per pair, with prompt, chosen and rejected columns)"


@pytest.fixture
def align_cli(kgpt2_cli, tiny_preset, tmp_path):
    def run(data):
        return kgpt2_cli("align", f"model.preset={tiny_preset}", f"align.data={data}", "lora.enabled=false",
                         f"checkpoints_root={tmp_path / 'runs'}", "run=a", "data.sequence_length=32", cwd=tmp_path)
    return run


@pytest.mark.parametrize("name, content, said", [
    ("prefs.csv", b"prompt,chosen,rejected\n", "has a header but no rows"),
    ("prefs.tsv", b"prompt\tchosen\trejected\n", "has a header but no rows"),
    ("prefs.csv.gz", gzip.compress(b"prompt,chosen,rejected\n"), "has a header but no rows"),
    ("prefs.csv", b"", "is an empty CSV file"),
], ids=["csv-header-only", "tsv-header-only", "gzipped-csv-header-only", "empty-csv"])
def test_a_preference_table_without_rows_is_named_in_its_own_terms(tmp_path, align_cli, name, content, said):
    (tmp_path / name).write_bytes(content)
    r = align_cli(name)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"kgpt2: error: '{name}' {said} {ADVICE}"]
    assert "JSON" not in r.stderr
    assert not (tmp_path / "runs" / "a").exists()


def test_several_files_without_records_name_the_table_forms_too(tmp_path, align_cli):
    (tmp_path / "a.csv").write_text("prompt,chosen,rejected\n")
    (tmp_path / "b.jsonl").write_text("\n")
    r = align_cli('["a.csv", "b.jsonl"]')
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "kgpt2: error: the 2 files (a.csv, b.jsonl) hold no preference records (give JSON or JSON Lines records, "
        "or CSV, TSV or parquet rows, with prompt, chosen and rejected)")
