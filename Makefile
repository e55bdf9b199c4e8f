# Entry points of the AI-SWA platform. Every target installs what it needs.
SHELL := /bin/bash
ROOT := $(CURDIR)
STATE := $(ROOT)/.state
PY := $(STATE)/venv/bin/python
LAUNCHER := $(PY) -m aiswa_mesh.launcher

.PHONY: help setup lock up down status logs demo test test-unit chaos bench clean

help:
	@echo "make demo    start the platform and analyse a standard-library package"
	@echo "make test    run the whole test suite (starts the platform, stops it after)"
	@echo "make setup   install system packages, the Python environment, generated code"
	@echo "make up | down | status | logs   run the platform under supervisord"
	@echo "make chaos   stop each part of the platform in turn and measure the recovery (not in make test)"
	@echo "make bench   run the benchmarks (engines, mesh latency, dashboard fan-out; not tests)"

setup:
	@bash scripts/setup.sh

lock:
	uv pip compile requirements.in --generate-hashes --python-version 3.11 -o requirements.lock

up: setup
	@$(LAUNCHER) up

down:
	@if [ -x $(PY) ]; then $(LAUNCHER) down; fi

status:
	@$(LAUNCHER) status

logs:
	@$(LAUNCHER) logs

demo: up
	@$(PY) -m aiswa_mesh.demo

test: setup
	@bash scripts/test.sh

test-unit: setup
	@$(PY) -m pytest -q tests/unit

chaos: setup
	@bash scripts/chaos.sh

bench: setup
	@bash scripts/bench.sh

clean: down
	@# The PostgreSQL data may live outside the checkout (see mesh/aiswa_mesh/_postgres.py).
	@if [ -L $(STATE)/pg ]; then rm -rf "$$(readlink $(STATE)/pg)"; fi
	rm -rf $(STATE)
