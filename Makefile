# Two commands do everything: `make quickstart` and `make test`.
# Each creates (once) and uses a local virtual environment in .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test test-fast demo bench-gpu clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,data]"
	touch $@

quickstart: $(STAMP)
	$(BIN)/kgpt2 quickstart

# The whole suite on TensorFlow, then the fast core again on JAX.
test: $(STAMP)
	KERAS_BACKEND=tensorflow $(BIN)/python -m pytest -q -p no:cacheprovider tests
	KERAS_BACKEND=jax $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

demo: $(STAMP)
	$(BIN)/kgpt2 demo

# On the GPU machine (device tool), after `. benchmarks/device_setup.sh`: kgpt2 vs HF (+PEFT) training throughput.
bench-gpu:
	python3 benchmarks/train_throughput.py --shards .bench/shards --tokenizer .bench/tokenizer --stage --out $(OUT)/train.json

clean:
	rm -rf $(VENV) checkpoints/quickstart
