# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test bench clean

# User code runs in bubblewrap (Debian's package `bubblewrap`): installed here when missing.
SYSTEM_PACKAGES := bubblewrap

$(BIN)/.installed: pyproject.toml
	@command -v bwrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $(SYSTEM_PACKAGES); \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq $(SYSTEM_PACKAGES); fi; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/modelbay serve

test: install
	$(BIN)/python -m pytest -n 2 -q

bench: install
	@command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python bench/direct_requests.py $(BENCH_ARGS)

.PHONY: bench-batch
bench-batch: install
	$(BIN)/python bench/batch_requests.py $(BENCH_ARGS)

.PHONY: bench-sandbox
bench-sandbox: install
	@command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python bench/sandbox.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .modelbay .pytest_cache
