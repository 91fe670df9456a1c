# The README's two commands: `make demo` (the local demo) and `make test` (the whole suite).
# Each creates .venv and installs what it needs, so both work on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lane-installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lane demo

test: $(STAMP)
	bash scripts/ensure-test-tools
	$(BIN)/python -m pytest

# The data-plane benchmark (not a test): direct vs gateway vs gateway + sidecar, and the upload memory check.
# Options through BENCH_ARGS, e.g. make bench BENCH_ARGS="--requests 5000 --svg bench.svg".
bench: $(STAMP)
	$(BIN)/python bench/dataplane.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check lane mesh_config loadtest tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
