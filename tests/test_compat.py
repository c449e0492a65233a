"""kgpt2.compat: the tested Keras / KerasHub range, refused outside it; keras-nlp declared as the card asks."""

import re
from pathlib import Path

import pytest

from kgpt2 import compat
from kgpt2.errors import UserError

pytestmark = pytest.mark.backend

PRIVATE = re.compile(r"\.(_flatten_layers|_dropout|_dropout_layer|_compute_attention|_self_attention_layer|"
                     r"_self_attention_layer_norm|_(query|key|value|output)_dense|_feedforward_\w+)\b|__class__\s*=")


def test_keras_nlp_is_keras_hub():
    import keras_hub
    import keras_nlp

    assert keras_nlp.models.GPT2CausalLM is keras_hub.models.GPT2CausalLM
    assert keras_nlp.models.GPT2Backbone is keras_hub.models.GPT2Backbone


def test_installed_versions_are_the_tested_ones_and_pyproject_says_so():
    import keras
    import keras_hub

    compat.check_versions()
    assert keras.__version__.startswith(compat.TESTED["keras"] + ".")
    assert keras_hub.__version__.startswith(compat.TESTED["keras_hub"] + ".")
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"keras>=3.15,<3.16"' in pyproject and '"keras-hub>=0.32,<0.33"' in pyproject


@pytest.mark.parametrize("installed, named", [
    ({"keras": "3.16.0", "keras_hub": "0.32.0"}, "keras 3.16.0"),
    ({"keras": "3.15.1", "keras_hub": "0.33.1"}, "keras-hub 0.33.1"),
    ({"keras": "3.1.5", "keras_hub": "0.32.0"}, "keras 3.1.5"),
])
def test_untested_versions_are_one_sentence(installed, named):
    with pytest.raises(UserError, match=f"is tested with keras 3.15.x and keras-hub 0.32.x, but {named} is installed"):
        compat.check_versions(installed)


def test_building_a_model_checks_the_versions(monkeypatch):
    from kgpt2.config import ModelConfig
    from kgpt2.model.models import build_backbone

    monkeypatch.setattr(compat, "_installed", lambda: {"keras": "3.15.1", "keras_hub": "0.40.0"})
    compat._check_installed_once.cache_clear()
    try:
        with pytest.raises(UserError, match="keras-hub 0.40.0 is installed"):
            build_backbone(ModelConfig(preset="scratch", num_layers=1, num_heads=1, hidden_dim=8,
                                       intermediate_dim=8, max_sequence_length=8, vocabulary_size=260))
        monkeypatch.setenv("KGPT2_UNTESTED_VERSIONS", "1")
        assert build_backbone(ModelConfig(preset="scratch", num_layers=1, num_heads=1, hidden_dim=8,
                                          intermediate_dim=8, max_sequence_length=8, vocabulary_size=260))
    finally:
        compat._check_installed_once.cache_clear()


def test_private_internals_only_in_compat():
    root = Path(compat.__file__).parent
    # generate.py is being rewritten onto keras-hub's own decoding; it joins this check then.
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name not in ("compat.py", "generate.py") and PRIVATE.search(p.read_text())]
    assert offenders == []
