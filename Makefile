# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make run PORT=9000 HOST=0.0.0.0`: both optional (the server's defaults: 127.0.0.1:8000).
PORT ?=
HOST ?=

.PHONY: install install-test system-packages run test bench bench-batch bench-sandbox clean

# User code runs in bubblewrap (Debian's package `bubblewrap`): installed here when missing.
SYSTEM_PACKAGES := bubblewrap

system-packages:
	@command -v bwrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $(SYSTEM_PACKAGES); \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq $(SYSTEM_PACKAGES); fi; }

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The server alone (what `make run` needs), and the server with the test tools and SDKs.
$(BIN)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(BIN)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@ $(BIN)/.installed

install: system-packages $(BIN)/.installed

install-test: system-packages $(BIN)/.installed-test

run: install
	$(BIN)/modelbay serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

test: install-test
	$(BIN)/python -m pytest -n 2 -q

bench: install-test
	@command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python bench/direct_requests.py $(BENCH_ARGS)

bench-batch: install-test
	$(BIN)/python bench/batch_requests.py $(BENCH_ARGS)

bench-sandbox: install-test
	@command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python bench/sandbox.py $(BENCH_ARGS)

# The data directory (./.modelbay: projects, requests, packages) is never removed here.
clean:
	rm -rf $(VENV) .pytest_cache
	@[ ! -d .modelbay ] || echo "kept the data directory .modelbay (remove it yourself to start afresh)"
