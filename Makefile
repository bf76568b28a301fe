# Flywheel developer commands. `make help` lists them; `make test` is exactly what CI runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
BIN := $(abspath $(VENV))/bin

# Every distribution of the repository, installed editable by `make install`.
PACKAGES := proto services/common services/cli services/orchestrator services/trajectory-store \
	services/model-server sandbox-runner dataset-svc trainer-svc gateway services/testing
PYPROJECTS := $(addsuffix /pyproject.toml,$(PACKAGES))
STAMP := $(VENV)/.installed

.PHONY: help install demo proto proto-check lint typecheck format test test-fast up status down clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): $(PYPROJECTS) requirements-dev.txt scripts/system-deps.txt
	bash scripts/install-system-deps.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt $(addprefix -e ,$(PACKAGES))
	@# Triton, for its interpreter only (tests/test_lora_kernels_interpreted.py), kept off the
	@# venv's path: on a CPU its presence would change what PyTorch and Liger choose.
	$(PY) -m pip install --quiet --no-deps --upgrade --target $(VENV)/triton-interpreter triton==3.9.0
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install every service (editable) plus the dev tools; idempotent

demo: $(STAMP) ## One improvement loop on this machine (Gemma 3 270M on the CPU), with a report in demo-report/
	$(BIN)/flywheel demo $(DEMO_ARGS)

proto: $(STAMP) ## Regenerate the Python code from proto/ (with .pyi stubs)
	PYTHON=$(PY) bash proto/generate.sh

proto-check: $(STAMP) ## Fail if the generated code in proto/gen is stale
	@tmp=$$(mktemp -d) && PYTHON=$(PY) bash proto/generate.sh $$tmp/python >/dev/null && \
	if diff -r -q $$tmp/python proto/gen/python -x __pycache__ >/dev/null; then \
		echo "proto: generated code is up to date"; rm -rf $$tmp; \
	else diff -r $$tmp/python proto/gen/python -x __pycache__ | head -40; rm -rf $$tmp; \
		echo "proto/gen is stale: run 'make proto' and commit the result"; exit 1; fi

lint: $(STAMP) ## ruff on all Python code, buf lint on the protos
	$(BIN)/ruff check .
	cd proto && $(BIN)/buf lint

typecheck: $(STAMP) ## mypy on every service's package (config: [tool.mypy] in pyproject.toml)
	$(BIN)/mypy

format: $(STAMP) ## Fix what ruff can fix and format the code
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: $(STAMP) proto-check lint typecheck ## Everything CI runs: install, generated-code drift, lint, types, all tests
	$(BIN)/pytest --timeout=300 --durations=25

test-fast: $(STAMP) ## All tests except the slow ones
	$(BIN)/pytest -m "not slow" --timeout=300

up: $(STAMP) ## Start the embedded stack in the foreground (Ctrl-C stops it)
	$(BIN)/flywheel up

status: $(STAMP) ## Show the health of a running embedded stack
	$(BIN)/flywheel status

down: $(STAMP) ## Stop an embedded stack started elsewhere
	$(BIN)/flywheel down

clean: ## Remove the virtualenv and caches (not ~/.flywheel)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
