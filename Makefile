# Entry points for people and CI.  `make demo` runs the whole system with simulated gateways;
# `make test` runs the test suite against the real local stack.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
IOTMON := $(BIN)/iotmon

.PHONY: install system-deps up down status test test-unit check demo clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

system-deps:
	bash infra/scripts/install-system-deps.sh

install: system-deps $(BIN)/.installed

up: install
	$(IOTMON) stack up

down:
	@if [ -x $(IOTMON) ]; then $(IOTMON) stack down; fi

status: install
	$(IOTMON) stack status

check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

test: up
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest -m unit

DEMO_ARGS ?= --duration 60 --heat-wave
demo: up
	$(IOTMON) thresholds import infra/examples/thresholds.yaml --replace
	$(IOTMON) demo $(DEMO_ARGS)
	$(IOTMON) stack status

clean: down
	rm -rf $(VENV)
