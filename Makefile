# Thin aliases: every target is one command a person could type. CI calls the same targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck pytest run load e2e bench up down clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -m "not e2e and not load"

test: lint typecheck pytest

run: $(STAMP)
	$(BIN)/oauth3-run

load: $(STAMP)
	$(BIN)/pytest -m load -s

e2e: $(STAMP)
	$(BIN)/pytest -m e2e

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

up:
	cd deploy && OAUTH3_GIT_COMMIT=$$(git rev-parse HEAD) docker-compose up --build

down:
	cd deploy && docker-compose down -v

clean:
	rm -rf $(VENV) run .mypy_cache .pytest_cache .ruff_cache .hypothesis
