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

.PHONY: help venv lock services services-stop services-status migrate topics setup run demo \
        helm test test-unit lint typecheck soak bench bench-takeover clean

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
	  CONVEYOR_WORKER__METRICS_HOST=127.0.0.1 $(DEV_KEYRING) \
	  $(BIN)/conveyor run

demo: setup ## publish sample and CRM jobs, show the results (needs `make run` in another terminal)
	$(ENV) $(DEV_KEYRING) $(BIN)/conveyor demo

lint: venv ## ruff (lint + format check)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv ## mypy strict on streams, handlers, schemas
	$(BIN)/mypy

helm: ## build the pinned helm into the tools cache if missing (once, about 3 minutes)
	scripts/helm --path

test-unit: venv helm ## unit tests only (no services)
	$(HELM_ENV) $(BIN)/pytest tests/unit -q

test: setup lint typecheck helm ## the whole suite against the real Kafka and Postgres
	$(ENV) $(HELM_ENV) $(BIN)/pytest -q

soak: setup ## long soak and chaos runs
	$(ENV) CONVEYOR_SOAK=1 $(BIN)/pytest -q -s -m soak

bench: setup ## throughput benchmark (see docs/BENCHMARKS.md)
	$(ENV) $(BIN)/python bench/throughput.py

bench-takeover: setup ## takeover after a SIGKILL: the crash guard's liveness, ~6 min (docs/BENCHMARKS.md)
	$(ENV) nice $(BIN)/python -m bench.takeover --rounds 2

clean: ## remove the virtualenv and caches (not the services' data)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
