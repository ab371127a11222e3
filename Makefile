# Two commands for a fresh machine with Python 3.10+: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run worker test lint install migrate seed bench clean axe

$(BIN)/activate: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(BIN)/activate

install: $(BIN)/activate

migrate: install
	$(BIN)/python manage.py migrate --noinput

seed: migrate
	$(BIN)/python manage.py seed_demo

# daphne and the task worker (it sends the order emails) side by side; Ctrl-C stops both.
run: seed
	@echo "Serving the shop on http://$(HOST):$(PORT)/ (admin at /admin/), with the task worker. Ctrl-C stops both."
	$(BIN)/python bin/serve.py --host $(HOST) --port $(PORT)

# The task worker alone (e.g. beside daphne processes started some other way).
worker: migrate
	$(BIN)/python manage.py db_worker --no-reload

test: install axe
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# axe-core, which the browser tests inject into pages to check accessibility (package.json,
# installed into node_modules/). Without npm the axe checks are skipped (under CI=true they
# fail: .ci/run installs npm).
axe: node_modules/axe-core/axe.min.js

node_modules/axe-core/axe.min.js: package.json package-lock.json
	@if command -v npm >/dev/null 2>&1; then npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the browser tests' axe checks will be skipped (apt-get install npm)"; fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Every benchmark scenario against real daphne processes on PostgreSQL and Redis (README "Performance").
# QUICK=1: the reduced run (under 2 minutes); SCENARIO=push_latency (or several, space-separated): only those.
$(VENV)/.bench-installed: $(BIN)/activate requirements-bench.txt
	$(BIN)/pip install --quiet -r requirements-bench.txt
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python bench/run.py $(if $(QUICK),--quick) $(foreach name,$(SCENARIO),--scenario $(name))

# The live-signal benchmarks (README: Live signals), the two scenarios `make bench` runs only when
# named: cart_fanout (one purchase fanned out to 1000 carts' sockets) and escalation_timer (the
# unread-notification email's punctuality with the task worker under load). QUICK=1: reduced.
.PHONY: bench-live
bench-live: $(VENV)/.bench-installed
	$(BIN)/python bench/run.py $(if $(QUICK),--quick) --scenario cart_fanout --scenario escalation_timer

clean:
	rm -rf $(VENV) test-output .pytest_cache node_modules

# The production topology on 127.0.0.1 (deploy/prod_local.py): nginx, 3 daphne processes and the task
# worker, DEBUG off, on the running PostgreSQL (database shop_prod_local) and Redis (database 9).
# Prints its URL; the processes keep running until `make prod-local-stop`, which stops exactly those.
.PHONY: prod-local prod-local-stop
prod-local: install
	$(BIN)/python deploy/prod_local.py start

prod-local-stop:
	$(BIN)/python deploy/prod_local.py stop
