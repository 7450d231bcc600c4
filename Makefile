# Entry points for people and CI.  `make demo` runs the whole system with simulated gateways;
# `make test` runs the test suite against the real local stack.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
IOTMON := $(BIN)/iotmon

.PHONY: install system-deps timescaledb dashboard up down status test test-plain test-unit check demo clean bench-tools bench bench-api bench-throughput bench-notify

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# TimescaleDB is the storage the tests run on.  TIMESCALEDB=optional goes on with plain
# PostgreSQL where no TimescaleDB can be installed (see docs/timescaledb.md).
TIMESCALEDB ?= required
timescaledb: $(BIN)/.installed
	$(IOTMON) stack timescaledb $(if $(filter required,$(TIMESCALEDB)),--require,)

system-deps:
	bash infra/scripts/install-system-deps.sh

# The dashboard's chart library: installed from the npm registry exactly as package-lock.json
# pins it (`npm ci`), then copied into the directory the API serves (docs/dashboard.md).
DASHBOARD_VENDOR := api/dashboard/vendor/chart.umd.min.js
$(DASHBOARD_VENDOR): package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts
	mkdir -p $(dir $@)
	cp node_modules/chart.js/dist/chart.umd.min.js $@
	cp node_modules/chart.js/LICENSE.md $(dir $@)chart.js-LICENSE.md

dashboard: $(DASHBOARD_VENDOR)

install: system-deps $(BIN)/.installed timescaledb dashboard

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

# The whole suite on TimescaleDB, then the storage tests again on plain PostgreSQL (a
# database of the same server in which TimescaleDB is never enabled), so neither path rots.
STORAGE_TESTS := tests/integration/test_migrations.py tests/integration/test_timescaledb.py \
	tests/integration/test_readings_sink.py tests/integration/test_output_sinks.py \
	tests/integration/test_sink_poison.py tests/integration/test_masterdata.py \
	tests/integration/test_api_aggregation.py tests/integration/test_api_alerts.py \
	tests/integration/test_api_location.py tests/integration/test_api_realtime.py \
	tests/integration/test_api_thresholds.py tests/integration/test_rollups.py
test: up
	IOTMON_TEST_TIMESCALEDB=$(TIMESCALEDB) $(BIN)/python -m pytest
	$(MAKE) --no-print-directory test-plain

# The stack's state directory (its libpq password file); expanded when a recipe runs.
STATE_DIR = $(shell $(BIN)/python -c 'from iotmon.settings import Settings; print(Settings().stack.state_dir)')
test-plain: up
	IOTMON_DB__URL="postgresql://iotmon@127.0.0.1:5433/iotmon_plain?passfile=$(STATE_DIR)/postgres-auth/pgpass" \
		IOTMON_DB__TIMESCALEDB=off \
		$(BIN)/python -m pytest $(STORAGE_TESTS)

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

bench-notify: up bench-tools
	$(BIN)/python -m bench.notify $(BENCH_ARGS)

bench: up bench-tools
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.latency --rate 500 --sensors 500
	$(BIN)/python -m bench.bridge
	$(BIN)/python -m bench.recovery
	$(BIN)/python -m bench.burst
	$(BIN)/python -m bench.api_load --reuse
	$(BIN)/python -m bench.dashboard
	$(BIN)/python -m bench.notify
	$(BIN)/python -m bench.state_size
