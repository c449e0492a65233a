# Two commands do everything: `make quickstart` and `make test`.
# Each creates (once) and uses a local virtual environment in .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test test-fast doctest demo bench-gpu clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,data]"
	touch $@

quickstart: $(STAMP)
	$(BIN)/kgpt2 quickstart

# Modules whose docstring examples do not run yet (still comments, or they need
# ../shared or a trained run); their owners make them run and shrink this list.
DOCTESTS_PENDING := align checkpoints cli demo evaluate export generate \
	periodic_eval pretrain quantize quickstart run_logs smoke train votes data/sources
DOCTESTS := --doctest-modules $(foreach m,$(DOCTESTS_PENDING),--ignore=kgpt2/$(m).py) kgpt2
# -rs: a summary of every skipped test and why.
PYTEST := -m pytest -q -rs -p no:cacheprovider

# The whole suite and the docstring examples on TensorFlow, then the fast core again on JAX.
test: $(STAMP)
	KERAS_BACKEND=tensorflow $(BIN)/python $(PYTEST) tests $(DOCTESTS)
	KERAS_BACKEND=jax $(BIN)/python $(PYTEST) -m "not slow" tests $(DOCTESTS)

test-fast: $(STAMP)
	$(BIN)/python $(PYTEST) -m "not slow" tests $(DOCTESTS)

# Only the docstring examples (seconds).
doctest: $(STAMP)
	$(BIN)/python $(PYTEST) $(DOCTESTS)

demo: $(STAMP)
	$(BIN)/kgpt2 demo

# On the GPU machine (device tool), after `. benchmarks/device_setup.sh`: kgpt2 vs HF (+PEFT) training throughput.
bench-gpu:
	python3 benchmarks/train_throughput.py --shards .bench/shards --tokenizer .bench/tokenizer --stage --out $(OUT)/train.json

clean:
	rm -rf $(VENV) checkpoints/quickstart
