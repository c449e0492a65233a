"""Hugging Face Spaces-style entry point: `python gradio_app.py` serves the kgpt2 demo.

With no arguments it opens the offline quickstart run (`checkpoints/quickstart`,
made by `kgpt2 quickstart`) on http://127.0.0.1:7860. The app itself lives in
kgpt2.demo (`kgpt2 demo --run DIR --host --port --share` is the same app).
Environment overrides: KGPT2_CHECKPOINTS_ROOT, KGPT2_RUN, GRADIO_SERVER_NAME,
GRADIO_SERVER_PORT.
"""

import os
import sys
from pathlib import Path

import kgpt2  # noqa: F401  (chooses the Keras backend first)
from kgpt2.errors import UserError

ROOT = os.environ.get("KGPT2_CHECKPOINTS_ROOT", str(Path(__file__).resolve().parent / "checkpoints"))


def main() -> int:
    from kgpt2.backend import import_keras_quietly

    import_keras_quietly()  # TensorFlow's C++ start-up lines would bury a one-line error
    from kgpt2.demo import launch

    try:
        launch(run=os.environ.get("KGPT2_RUN", "quickstart"), checkpoints_root=ROOT,
               host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
               port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), share=False)
    except UserError as e:
        print(f"gradio_app: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
