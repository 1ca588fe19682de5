# The two commands a newcomer needs: `make demo` and `make test`. Each builds .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OUT ?= demo-out
USERS ?= 200

.PHONY: install demo test test-fast lint typecheck unit bench bench-full ui clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "dsrflow needs Python >= 3.11 ($(PYTHON) is older)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,demo]'
	touch $(STAMP)

install: $(STAMP)

# From the checkout's root: the demo world (examples/) is not part of an install.
demo: $(STAMP)
	$(BIN)/python -m entrypoints.cli demo --out $(OUT) --users $(USERS)

# ruff, the import contract in pyproject.toml (each layer imports only those below it),
# and hadolint on the Dockerfile (no Docker daemon needed; tests/test_container.py checks
# the image's and docker-compose.yaml's shape).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

typecheck: $(STAMP)
	$(BIN)/mypy dsrflow connectors pipeline tasks flows deployments entrypoints examples tests benchmarks docs/screenshots.py

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck unit

# The tests that need no server (PostgreSQL, Prefect, moto) and are not end to end, on
# every core: about a minute. `make test` runs everything, as CI does.
test-fast: $(STAMP)
	$(BIN)/pytest -q -n auto -m "not server and not slow"

# Small runs of the benchmarks, each against its baseline in the same run (log redaction
# against `grep -F`; a retention sweep against a hand-written batched DELETE on
# PostgreSQL; two workers against one). docs/performance.md has the full sizes and the
# commands.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench_logs
	$(BIN)/python -m benchmarks.bench_sweep --rows 200000 --expired 40000 --batch 5000
	$(BIN)/python -m benchmarks.bench_e2e --requests 20,80 --users 400 --log-lines 4000
	$(BIN)/python -m benchmarks.bench_sql --users 100000 --subjects 1000
	$(BIN)/python -m benchmarks.bench_workers --requests 200 --batch-size 50

# The sizes docs/performance.md reports (an hour or more on two cores).
bench-full: $(STAMP)
	$(BIN)/python -m benchmarks.bench_logs
	$(BIN)/python -m benchmarks.bench_sweep --repeat 3
	$(BIN)/python -m benchmarks.bench_e2e --requests 100,1000,10000 --users 16000 --without-s3
	$(BIN)/python -m benchmarks.bench_e2e --requests 40,160 --users 600 --log-lines 4000
	$(BIN)/python -m benchmarks.bench_latency --rounds 3 --poll 1
	$(BIN)/python -m benchmarks.bench_startup --repeat 11
	$(BIN)/python -m benchmarks.bench_sql --users 1000000 --subjects 10000
	$(BIN)/python -m benchmarks.bench_workers --requests 800 --batch-size 100 --workers 1,2,1,2

# A local Prefect server and UI (SQLite under .dsrflow/prefect, analytics off). Then, in
# another shell: PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/dsrflow serve
ui: $(STAMP)
	@mkdir -p .dsrflow/prefect
	@echo "Prefect UI: http://127.0.0.1:4200  (API: http://127.0.0.1:4200/api)"
	PREFECT_HOME=$(CURDIR)/.dsrflow/prefect PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 \
		$(BIN)/prefect server start --host 127.0.0.1 --port 4200

clean:
	rm -rf $(OUT) .dsrflow .pytest_cache .mypy_cache .ruff_cache
