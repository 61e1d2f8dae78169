# edgeloop: `make run` (the whole pipeline locally on bundled sample data) and `make test` (everything CI checks).
# Both set up what they need on a fresh machine: .venv, Python packages, Azurite from npm.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
MODULE_REQUIREMENTS := $(wildcard modules/*/requirements.txt)
RUN_DIR ?= runs/latest
PYTEST_ARGS ?=

.PHONY: help setup lint typecheck pytest test run bench clean

help:
	@echo "make run    set up, then run the pipeline under edgesim on samples/ (run dir: $(RUN_DIR))"
	@echo "make test   set up, then ruff + mypy + pytest"
	@echo "make bench  set up, then the benchmarks (benchmarks/results.json)"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(PY_STAMP): $(PY) requirements-dev.txt libs/edgekit/pyproject.toml libs/edgesim/pyproject.toml $(MODULE_REQUIREMENTS)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt $(foreach r,$(MODULE_REQUIREMENTS),-r $(r))
	touch $@

SYSTEM_STAMP := $(VENV)/.system-packages

$(SYSTEM_STAMP): scripts/ensure-system-packages | $(PY)
	scripts/ensure-system-packages
	touch $@

$(NODE_STAMP): package.json package-lock.json $(SYSTEM_STAMP)
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(PY_STAMP) $(NODE_STAMP)

lint: $(PY_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(PY_STAMP)
	$(VENV)/bin/mypy

pytest: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

run: setup
	$(PY) scripts/demo.py --out $(RUN_DIR)

bench: setup
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) node_modules runs .mypy_cache .ruff_cache .pytest_cache
