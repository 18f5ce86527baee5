# The front door. Each target sets up what it needs on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test stop loadtest lint format

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

run: $(BIN)/.installed  ## serve on 127.0.0.1:8080 (starts PostgreSQL and Redis, migrates, seeds)
	$(BIN)/python -m config.serve

test: $(BIN)/.installed  ## run every test against real PostgreSQL and Redis (and Chromium)
	$(BIN)/python -m config.browser
	$(BIN)/python -m pytest

stop: $(BIN)/.installed  ## stop gunicorn, the Celery worker and beat, PostgreSQL and Redis
	$(BIN)/python -m config.serve stop

loadtest: $(BIN)/.installed  ## e.g. make loadtest ARGS="--scenario load --compare"
	$(BIN)/python manage.py loadtest $(ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

format: $(BIN)/.installed
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .
