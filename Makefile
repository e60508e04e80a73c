# The two commands of the README: `make demo` and `make test`.
# Each creates .venv when it is missing and installs flowkit with its dev tools.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: demo demo-postgres test lint typecheck docs bench clean brokers brokers-env brokers-stop test-brokers chaos

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.ecommerce

# The same demo with its records in PostgreSQL: a throwaway server of its own,
# stopped afterwards (scripts/brokers.sh installs it from Debian when missing).
demo-postgres: $(STAMP)
	@state=$$(mktemp -d) && export FLOWKIT_BROKERS_DIR="$$state" && \
	trap '$(BROKERS) stop postgres; rm -rf "$$state"' EXIT && trap 'exit 130' INT TERM && \
	$(BROKERS) start postgres && \
	eval "$$($(BROKERS) env)" && \
	$(BIN)/python -m examples.ecommerce --store "$$FLOWKIT_POSTGRES_URL"

test: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $(VENV)/site

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir $(VENV)/site

# The benchmarks run in their own environment: flowkit plus the peers it is compared with.
$(BENCH_STAMP): pyproject.toml benchmarks/requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[ui]' -r benchmarks/requirements.txt
	touch $(BENCH_STAMP)

# The Redis and PostgreSQL benchmarks run against servers of their own (brokers.sh starts
# both and exports FLOWKIT_REDIS_URL and FLOWKIT_POSTGRES_URL), stopped afterwards.
bench: $(BENCH_STAMP)
	@state=$$(mktemp -d) && export FLOWKIT_BROKERS_DIR="$$state" && \
	trap 'bash scripts/brokers.sh stop; rm -rf "$$state"' EXIT && trap 'exit 130' INT TERM && \
	bash scripts/brokers.sh start && \
	eval "$$(bash scripts/brokers.sh env)" && \
	$(BENCH_VENV)/bin/python -m benchmarks

# The real servers of the broker tests (scripts/brokers.sh; docs/development.md).
# `make brokers` starts them and prints their URLs; to use them in a shell:
#   eval "$(make -s brokers-env)"
BROKERS := bash scripts/brokers.sh

brokers:
	@$(BROKERS) start
	@echo '# export these (eval "$$(make -s brokers-env)"), then run make test:'
	@$(BROKERS) env

brokers-env:
	@$(BROKERS) env

brokers-stop:
	@$(BROKERS) stop

# `make test` against servers of its own, stopped afterwards whatever the outcome
# (it leaves any started by `make brokers` alone).
test-brokers:
	@state=$$(mktemp -d) && export FLOWKIT_BROKERS_DIR="$$state" && \
	trap '$(BROKERS) stop; rm -rf "$$state"' EXIT && trap 'exit 130' INT TERM && \
	$(BROKERS) start && \
	eval "$$($(BROKERS) env)" && \
	FLOWKIT_REQUIRE_BROKERS=1 $(MAKE) test

# The chaos runner (tests/chaos/runner.py): the e-commerce example's workers under
# faults, then a ledger check; exits 1 if an order was lost, an effect applied twice, a
# saga left unfinished or a dead letter unaccounted for. Every broker (Redis, NATS,
# RabbitMQ, Kafka) x SQLite and PostgreSQL; the runner starts a private server of each
# broker (tests/chaos/servers.py), which it restarts mid-run (not Tansu, the Kafka one:
# its data are in memory); PostgreSQL is a server of scripts/brokers.sh, stopped
# afterwards. Each cell places CHAOS_ORDERS orders at CHAOS_RATE a second; the tables
# go to .venv/chaos-<broker>.json.
CHAOS_ORDERS ?= 10000
CHAOS_RATE ?= 100
CHAOS_SEED ?= 7
CHAOS := $(BIN)/python -m tests.chaos --orders $(CHAOS_ORDERS) --rate $(CHAOS_RATE) --seed $(CHAOS_SEED)

chaos: $(STAMP)
	@state=$$(mktemp -d) && export FLOWKIT_BROKERS_DIR="$$state" && \
	trap '$(BROKERS) stop postgres; rm -rf "$$state"' EXIT && \
	trap 'exit 130' INT TERM && \
	$(BROKERS) start postgres && \
	eval "$$($(BROKERS) env postgres)" && rc=0 && \
	for broker in redis nats rabbitmq kafka; do \
		$(CHAOS) --transport $$broker --store sqlite,postgres --json $(VENV)/chaos-$$broker.json \
			|| rc=1; \
	done && \
	exit $$rc

clean:
	rm -rf $(VENV) $(BENCH_VENV) site .mypy_cache .ruff_cache
