# Entry points for people and CI.  `make demo` runs the whole system with simulated gateways;
# `make test` runs the test suite against the real local stack.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
IOTMON := $(BIN)/iotmon

.PHONY: install system-deps up down status test test-unit check demo clean bench-tools bench bench-api bench-throughput

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

# Ten simulated minutes in one: the heat wave climbs past the example thresholds and stays
# there longer than their 60 s hold, so the demo raises alerts.
DEMO_ARGS ?= --duration 60 --heat-wave --speed 10
demo: up
	$(IOTMON) thresholds import infra/examples/thresholds.yaml --replace
	$(IOTMON) demo $(DEMO_ARGS)
	$(IOTMON) stack status

clean: down
	rm -rf $(VENV)

# Benchmarks (never part of `make test`): numbers under bench/results/, see docs/performance.md.
bench-tools: install
	$(BIN)/pip install -q -e '.[bench]'
	@command -v go >/dev/null && GOFLAGS=-mod=mod go install github.com/rakyll/hey@v0.1.5 \
		|| echo "go not found: the API bench falls back to its Python client"

bench-api: up bench-tools
	$(BIN)/python -m bench.api_load $(BENCH_ARGS)

bench-throughput: up bench-tools
	$(BIN)/python -m bench.throughput $(BENCH_ARGS)

bench: up bench-tools
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.latency --rate 500 --sensors 500
	$(BIN)/python -m bench.bridge
	$(BIN)/python -m bench.recovery
	$(BIN)/python -m bench.burst
	$(BIN)/python -m bench.api_load --reuse
	$(BIN)/python -m bench.state_size
