# Run `make help` for the targets. `demo` and `test` create .venv by themselves.
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PORT ?= 8787

.PHONY: help install demo test lint format bench emulator clean

help: ## Show this list
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

# The connector alone (what `make demo` needs), or with everything the tests and benchmarks use.
CORE_STAMP := $(VENV)/.core-stamp

$(CORE_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $(CORE_STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(STAMP) $(CORE_STAMP)

install: $(STAMP) ## Create .venv and install the project with every extra (again only when pyproject.toml changes)

demo: $(CORE_STAMP) ## Start the emulator, sync it three times into codat_warehouse.duckdb, print what landed
	$(BIN)/python pipelines/demo.py

test: $(STAMP) ## Run the whole test suite against the emulator, on every core (at most 4 workers)
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist worksteal

lint: $(STAMP) ## ruff (lint and format check) and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## Sync vs dlt rest_api, at scale, emulator, attachments: benchmarks.json, chart, README (BENCH_ARGS="--only scale")
	$(BIN)/python tests/benchmarks/run.py --out benchmarks.json $(BENCH_ARGS)

emulator: $(CORE_STAMP) ## Run the emulator on PORT (default 8787) until Ctrl-C
	$(BIN)/codat-emulator --port $(PORT) --companies 3 --customers 1000 --seed 7

clean: ## Remove .venv, caches and local DuckDB files
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.duckdb *.duckdb.wal
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
