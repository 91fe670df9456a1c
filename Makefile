# The README's two commands: `make demo` (the local demo) and `make test` (the whole suite).
# Each creates .venv and installs what it needs, so both work on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lane-installed
DEMO_STAMP := $(VENV)/.lane-demo-installed

.PHONY: demo test lint bench bench-logic bench-dataplane compiled pure clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# `make demo` installs only what the demo runs (lane[proxy], and grpc for its gRPC call); `make test` everything the suite uses.
$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[proxy,grpc]'
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP) $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/lane demo

test: $(STAMP)
	bash scripts/ensure-test-tools
	$(BIN)/python -m pytest

# The side-by-side benchmark (not a test): lane gateway / sidecar chain vs Envoy vs direct, with wrk,
# results as a table plus JSON and SVG in bench/results/. Options through BENCH_ARGS, e.g.
# make bench BENCH_ARGS="--quick" or BENCH_ARGS="--subjects direct,envoy,gateway --rounds 5".
bench: $(STAMP)
	$(BIN)/python bench/compare.py $(BENCH_ARGS)

# lane's own per-request work without sockets (the real gateway and sidecar handlers, in-memory exchanges):
# CPU microseconds per request, and with BENCH_ARGS="--profile" where it goes.
bench-logic: $(STAMP)
	$(BIN)/python bench/request_logic.py $(BENCH_ARGS)

# The older data-plane run: an aiohttp client against direct / gateway / gateway + sidecar, and the
# upload memory check (256 MiB streamed through the gateway, peak RSS growth vs the body size).
bench-dataplane: $(STAMP)
	$(BIN)/python bench/dataplane.py $(BENCH_ARGS)

# Optional: the hot path (setup.py's COMPILED) built with mypyc into extension modules beside the
# sources; the editable install then imports those (an extension module wins over its .py). Needs gcc
# and the Python headers. `lane --version` says "compiled: yes, N modules"; `make pure` goes back.
# The editable install in compat mode (the checkout on sys.path): mypyc's shared library
# (lane__mypyc*.so) sits at the top of the checkout, beside lane/, and must import from any directory.
compiled: $(DEMO_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[compiled]' --config-settings editable_mode=compat
	LANE_COMPILE=1 $(BIN)/python setup.py build_ext --inplace

pure:
	find lane -name '*.so' -delete
	rm -f lane__mypyc.*.so
	rm -rf build

lint: $(STAMP)
	$(BIN)/ruff check lane mesh_config loadtest tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
