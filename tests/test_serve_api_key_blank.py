"""`kgpt2 serve --api-key ""` (a `--api-key "$KEY"` whose variable is unset) is refused in one sentence, before
anything is loaded: it served with no key at all, silently, open to anyone who could reach the port.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.backend_neutral

SENTENCE = ("kgpt2: error: --api-key is empty or has spaces at its ends (an unset variable?); give the key itself, "
            "or leave --api-key out to serve without one")


@pytest.mark.parametrize("key", ["", "   ", " secret"])
def test_a_blank_api_key_is_refused(key, tmp_path, kgpt2_cli):
    # the run need not exist: the key is checked first (before, this said the run was missing, or served keyless)
    result = kgpt2_cli("serve", "--run", tmp_path / "run", "--port", "8799", f"--api-key={key}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [SENTENCE]
