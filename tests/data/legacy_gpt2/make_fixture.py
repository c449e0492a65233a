"""Write the legacy fixture with the real legacy stack: KerasNLP 0.6.4 on tf-keras (Keras 2).

The project kgpt2 grew from saved `GPT2CausalLM.save_weights("....ckpt")`
under TensorFlow / Keras 2. This script makes such a model (2 layers, 32
wide, vocabulary 512 as the tests' pydoc BPE, weights moved off their initial values so every variable matters) and
saves it the two ways that stack can:

    legacy.ckpt.index + legacy.ckpt.data-00000-of-00001   (save_weights("legacy.ckpt"))
    legacy.weights.h5                                      (save_weights("legacy.weights.h5"))
    logits.npz                                             (its logits on a fixed input)

(Keras 2's older plain `.h5` format cannot hold it: tf-keras raises "name
already exists" writing it, as KerasNLP layers repeat variable names.)

Regenerate (about a minute; packages into a throwaway folder, the venv stays as it is):

    pip install --target /tmp/legacy --no-deps "tf-keras==2.21.*" "keras-nlp==0.6.4" "keras-core==0.1.7" dm-tree
    KERAS_BACKEND=tensorflow TF_USE_LEGACY_KERAS=1 PYTHONPATH=/tmp/legacy python tests/data/legacy_gpt2/make_fixture.py
"""

import sys
from pathlib import Path

import keras_nlp
import numpy as np
import tensorflow as tf

out = Path(__file__).resolve().parent
assert tf.keras.__name__.startswith("tf_keras") or "tf_keras" in tf.keras.__file__, "needs TF_USE_LEGACY_KERAS=1"
tf.keras.utils.set_random_seed(0)
backbone = keras_nlp.models.GPT2Backbone(vocabulary_size=512, num_layers=2, num_heads=2, hidden_dim=32,
                                         intermediate_dim=64, max_sequence_length=16)
lm = keras_nlp.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
rng = np.random.default_rng(0)
for w in lm.weights:
    w.assign(w.numpy() + rng.normal(0, 0.1, w.shape).astype("float32"))
ids = np.array([[5, 17, 99, 33, 9, 41, 2, 77, 0, 3, 64, 90]], "int32")
logits = lm({"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}, training=False).numpy()
lm.save_weights(str(out / "legacy.ckpt"))
(out / "checkpoint").unlink(missing_ok=True)  # TF's index of checkpoints in the folder, not needed
lm.save_weights(str(out / "legacy.weights.h5"))
np.savez(out / "logits.npz", token_ids=ids, logits=logits,
         versions=np.array([keras_nlp.__version__, tf.keras.__version__ if hasattr(tf.keras, "__version__") else "tf_keras"]))
print("wrote", sorted(p.name for p in out.iterdir()), "with", sys.version.split()[0])
