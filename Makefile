# Two commands for a fresh machine with Python 3.10+: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run worker test lint install migrate seed bench clean

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

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python bench/checkout_latency.py

clean:
	rm -rf $(VENV) test-output .pytest_cache
