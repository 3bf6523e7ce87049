# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make run PORT=9000 HOST=0.0.0.0`: both optional (the server's defaults: 127.0.0.1:8000).
PORT ?=
HOST ?=

.PHONY: install install-test system-packages test-system-packages run test bench bench-batch bench-ray bench-sandbox clean

# $(call apt_install,PACKAGES): Debian's packages, as root or through sudo.
apt_install = if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1); \
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1); fi

# User code runs in bubblewrap (Debian's package `bubblewrap`): installed here when missing.
system-packages:
	@command -v bwrap >/dev/null || { $(call apt_install,bubblewrap); }

# The tests also run on PostgreSQL servers they start themselves (Debian's package `postgresql`,
# whose binaries live in /usr/lib/postgresql/<version>/bin), and drive the web console in a headless
# Chromium (Debian's package `chromium`, at /usr/bin/chromium): installed here when missing.
test-system-packages: system-packages
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { $(call apt_install,postgresql); }
	@[ -x /usr/bin/chromium ] || { $(call apt_install,chromium); }

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

install-test: test-system-packages $(BIN)/.installed-test

run: install
	$(BIN)/modelbay serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

# The SDK flows that run again with instances on Ray (the whole SDK suites run on local instances).
RAY_SDK_FLOWS := tests/compat/ubiops/test_direct_requests.py tests/compat/ubiops/test_streaming.py \
  tests/compat/ubiops/test_batch_requests.py tests/compat/ubiops/test_deployment_file.py \
  tests/compat/abeja/test_runs.py tests/compat/abeja/test_services.py tests/compat/datature/test_jobs.py

# Four groups, three at a time: the whole suite on SQLite; the suites of the store, the engine and
# the servers (all but the SDK, client and example suites) on PostgreSQL (tests/fixtures/postgres.py);
# the SDK suites (tests/compat) on a cluster of three servers on one PostgreSQL behind a round-robin
# balancer (tests/fixtures/cluster.py); and the main SDK flows of each dialect on a server whose
# instances are actors on a Ray cluster of two nodes (tests/fixtures/ray_cluster.py), once the
# cluster group has ended: an actor's start (a new process that imports Ray) took 0.5 s on a quiet
# machine and over 30 s with all four groups at once. The tests mostly wait on servers and user
# code, so together they take far less than one after the other.
# tests/runtime opens no store, and the SDK flows meet PostgreSQL in the cluster group: neither runs
# twice. The other groups' output follows the SQLite run's, then a recap of each group's failures and
# last line (a CI log shows only its tail); any group failing fails `make test`.
test: install-test
	@sqlitelog=$$(mktemp); pglog=$$(mktemp); clusterlog=$$(mktemp); raylog=$$(mktemp); \
	MODELBAY_TEST_DATABASE=postgresql $(BIN)/python -m pytest -n 2 -q --ignore=tests/runtime \
	  --ignore=tests/compat --ignore=tests/clients --ignore=tests/examples >$$pglog 2>&1 & pg=$$!; \
	(MODELBAY_TEST_DATABASE=postgresql MODELBAY_TEST_CLUSTER=3 \
	  $(BIN)/python -m pytest -n 1 -q tests/compat >$$clusterlog 2>&1; echo $$? >$$clusterlog.rc; \
	 MODELBAY_TEST_RUNTIME=ray $(BIN)/python -m pytest -n 1 -q $(RAY_SDK_FLOWS) >$$raylog 2>&1; \
	 echo $$? >$$raylog.rc) & chained=$$!; \
	trap 'kill $$pg $$chained 2>/dev/null; rm -f $$sqlitelog* $$pglog $$clusterlog* $$raylog*; exit 130' INT TERM; \
	echo "== the suite on SQLite"; ($(BIN)/python -m pytest -n 2 -q 2>&1; echo $$? >$$sqlitelog.rc) | tee $$sqlitelog; \
	sqlite=$$(cat $$sqlitelog.rc); wait $$pg; postgres=$$?; wait $$chained; \
	clustered=$$(cat $$clusterlog.rc); rayed=$$(cat $$raylog.rc); \
	echo "== the store, the engine and the servers on PostgreSQL"; cat $$pglog; \
	echo "== the SDK suites on a cluster of three servers"; cat $$clusterlog; \
	echo "== the main SDK flows with instances on Ray"; cat $$raylog; \
	echo "== in short (the failures and the last line of each group)"; \
	for log in $$sqlitelog $$pglog $$clusterlog $$raylog; do \
	  grep -E '^(FAILED|ERROR) ' $$log; tail -n 1 $$log; done; \
	rm -f $$sqlitelog* $$pglog $$clusterlog* $$raylog*; \
	[ $$sqlite = 0 ] && [ $$postgres = 0 ] && [ $$clustered = 0 ] && [ $$rayed = 0 ]

bench: install-test
	@command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python bench/direct_requests.py $(BENCH_ARGS)

bench-batch: install-test
	$(BIN)/python bench/batch_requests.py $(BENCH_ARGS)

bench-ray: install-test
	@command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python bench/ray_runtime.py $(BENCH_ARGS)

bench-sandbox: install-test
	@command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python bench/sandbox.py $(BENCH_ARGS)

# The data directory (./.modelbay: projects, requests, packages) is never removed here.
clean:
	rm -rf $(VENV) .venv-clients .venv-bench .pytest_cache
	@[ ! -d .modelbay ] || echo "kept the data directory .modelbay (remove it yourself to start afresh)"
