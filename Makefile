# Two commands do everything: `make quickstart` and `make test`.
# Each creates (once) and uses a local virtual environment in .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test test-tf test-jax test-fast doctest demo bench-gpu clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,data]"
	touch $@

quickstart: $(STAMP)
	$(BIN)/kgpt2 quickstart

# Every module's docstring example runs (seconds, no ../shared, no network).
DOCTESTS := --doctest-modules kgpt2
# -rs: a summary of every skipped test and why.
PYTEST := -m pytest -q -rs -p no:cacheprovider

# The tests whose outcome depends on the Keras backend (model numerics, training, checkpoints,
# generation, alignment, adapters, distribution) are the files marked `pytestmark = pytest.mark.backend`;
# the rest are marked `backend_neutral` (the demo's UI, the HTTP layer, the CLI's journeys and refusals,
# data preparation, config: they drive the same code paths and run once, on JAX, the backend kgpt2 picks
# when KERAS_BACKEND is unset and the one Colab has; running them again on TensorFlow doubled CI's time).
# tests/conftest.py refuses a file marked neither way.
TF_TESTS := -m "backend and not slow" tests

# The whole suite and the docstring examples on JAX, then the backend-dependent core on TensorFlow, each
# spread over two worker processes (pytest-xdist; this machine and CI have 2 cores, and most tests use one
# at a time). `--dist loadfile` keeps a file's tests on one worker, so a module's fixtures (a demo server, a
# loaded model) are built once. Fails if either pass fails.
XDIST := -n 2 --dist loadfile
test: $(STAMP)
	@echo "== JAX: the whole suite =="; \
	KERAS_BACKEND=jax $(BIN)/python $(PYTEST) $(XDIST) tests $(DOCTESTS); jx=$$?; \
	echo "== TensorFlow: the backend-dependent tests =="; \
	KERAS_BACKEND=tensorflow $(BIN)/python $(PYTEST) $(XDIST) $(TF_TESTS) $(DOCTESTS); tf=$$?; \
	test $$jx -eq 0 -a $$tf -eq 0

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(BIN)/python $(PYTEST) tests $(DOCTESTS)

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(BIN)/python $(PYTEST) $(TF_TESTS) $(DOCTESTS)

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
