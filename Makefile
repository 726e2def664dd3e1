# Conveyor — developer entry points. `make run` and `make test` work on a fresh
# machine: they create the virtualenv, install, start Kafka and Postgres
# (scripts/services), migrate and create the topics.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/dev.lock
SERVICES := scripts/services
# The services' connection settings (ports are configurable, see scripts/README.md).
ENV := eval "$$($(SERVICES) env)" &&
# The pinned helm the chart tests render with (scripts/helm builds it once into a cache).
HELM_ENV := CONVEYOR_HELM="$$(scripts/helm --path)"
# DEV ONLY: a published key (base64 of "conveyor-dev-key-not-a-secret!!!") so `make run`
# consumes CRM jobs and `make demo` can register its stand-in connection. Never use it
# for real connections; an exported CONVEYOR_CRM__KEYRING takes its place.
DEV_KEYRING := CONVEYOR_CRM__KEYRING="$${CONVEYOR_CRM__KEYRING:-dev:Y29udmV5b3ItZGV2LWtleS1ub3QtYS1zZWNyZXQhISE=}"
# DEV ONLY: published console logins for `make console` (an exported
# CONVEYOR_CONSOLE__TOKENS takes their place). Never use them outside a laptop.
DEV_CONSOLE_OPERATOR := conveyor-dev-operator-token-not-a-secret
DEV_CONSOLE_VIEWER := conveyor-dev-viewer-token-not-a-secret
DEV_CONSOLE := CONVEYOR_CONSOLE__TOKENS="$${CONVEYOR_CONSOLE__TOKENS:-dev:operator:$(DEV_CONSOLE_OPERATOR),guest:viewer:$(DEV_CONSOLE_VIEWER)}"

.PHONY: help venv lock services services-stop services-status migrate topics setup run demo \
        console helm browser toxiproxy test test-unit lint typecheck soak soak-faults bench \
        bench-takeover clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

# Dependencies come only from the hash-pinned lock (pip refuses anything
# unpinned or with another hash), then Conveyor itself without dependencies.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP) ## create .venv and install Conveyor with its dev dependencies (from the lock)

lock: venv ## regenerate requirements/*.lock from pyproject.toml (scripts/lock; docs/SECURITY.md)
	scripts/lock

services: ## install (if missing) and start Kafka and Postgres on loopback
	$(SERVICES) start

services-stop: ## stop Kafka and Postgres
	$(SERVICES) stop

services-status: ## show whether Kafka and Postgres are up
	$(SERVICES) status

migrate: venv services ## apply SQL migrations
	$(ENV) $(BIN)/conveyor migrate

topics: venv services ## create the catalog's topics
	$(ENV) $(BIN)/conveyor topics create

setup: migrate topics ## everything `run` and `test` need

run: setup ## run the worker in the foreground with readable logs (and a dev CRM key)
	$(ENV) CONVEYOR_LOGGING__FORMAT=console CONVEYOR_HTTP__ALLOWED_HOSTS=127.0.0.1:* \
	  CONVEYOR_CRM__ALLOWED_ACCOUNT_HOSTS=127.0.0.1:* \
	  CONVEYOR_WORKER__METRICS_HOST=127.0.0.1 $(DEV_KEYRING) \
	  $(BIN)/conveyor run

console: setup ## the operations console on http://127.0.0.1:9180/ with dev logins (docs/CONSOLE.md)
	@echo "console: http://127.0.0.1:9180/  dev logins (DEV ONLY): operator $(DEV_CONSOLE_OPERATOR), viewer $(DEV_CONSOLE_VIEWER)"
	$(ENV) CONVEYOR_LOGGING__FORMAT=console $(DEV_CONSOLE) $(BIN)/conveyor console

demo: setup ## publish sample and CRM jobs, show the results (needs `make run` in another terminal)
	$(ENV) $(DEV_KEYRING) $(BIN)/conveyor demo

lint: venv ## ruff (lint + format check)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv ## mypy strict on streams, handlers, schemas
	$(BIN)/mypy

helm: ## build the pinned helm into the tools cache if missing (once, about 3 minutes)
	scripts/helm --path

browser: ## install Debian's chromium and chromedriver if missing (the console's browser tests)
	scripts/browser install

toxiproxy: ## build the pinned Toxiproxy server into the tools cache if missing (once, ~1 minute)
	scripts/toxiproxy --path

test-unit: venv helm ## unit tests only (no services)
	$(HELM_ENV) $(BIN)/pytest tests/unit -q

test: setup lint typecheck helm browser toxiproxy ## the whole suite against the real Kafka and Postgres
	$(ENV) $(HELM_ENV) $(BIN)/pytest -q

soak: setup ## long soak and chaos runs
	$(ENV) CONVEYOR_SOAK=1 $(BIN)/pytest -q -s -m soak

# The compound-fault soak's long variant: 20 minutes of faults, then the drain and
# the oracle (docs/RELIABILITY.md, "The compound-fault soak"). CONVEYOR_FAULT_SEED
# replays a seed; without one a random seed is drawn and printed.
SOAK_FAULTS_S ?= 1200
soak-faults: setup toxiproxy ## compound-fault soak, long variant (20 min of faults; CONVEYOR_FAULT_SEED=N)
	$(ENV) CONVEYOR_FAULT_SOAK_S=$(SOAK_FAULTS_S) nice -n 10 $(BIN)/pytest -q -s -m fault_soak \
	  tests/faults/test_soak_faults.py

bench: setup ## throughput benchmark (see docs/BENCHMARKS.md)
	$(ENV) $(BIN)/python bench/throughput.py

bench-takeover: setup ## takeover after a SIGKILL: the crash guard's liveness, ~6 min (docs/BENCHMARKS.md)
	$(ENV) nice $(BIN)/python -m bench.takeover --rounds 2

clean: ## remove the virtualenv and caches (not the services' data)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
