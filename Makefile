# Thin aliases: every target is one command a person could type. CI calls the same targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DISTRIBUTIONS := attestation runtime sidecar service verifier phala simulator

.PHONY: venv lock test lint typecheck pytest run load e2e bench images up down clean

# third-party packages only from the lock, each checked against its hash; then our seven
# distributions in editable mode, built with the locked setuptools (no unpinned build backend)
$(STAMP): requirements.lock $(DISTRIBUTIONS:%=%/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
		-r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
		--no-build-isolation $(DISTRIBUTIONS:%=-e %)
	$(BIN)/python -m pip check --disable-pip-version-check
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

# the reproducible role images of HEAD (buildah, as root); BASE_IMAGE=NAME@sha256:… for a
# release, IMAGES_ARGS=--local-base for a Debian base made here
images: $(STAMP)
	bash deploy/images.sh $(IMAGES_ARGS)

up: $(STAMP)
	$(BIN)/python deploy/context.py build/context
	cd deploy && OAUTH3_GIT_COMMIT=$$(git rev-parse HEAD) DOCKER_BUILDKIT=1 \
		COMPOSE_DOCKER_CLI_BUILD=1 docker-compose -f docker-compose.yml \
		-f docker-compose.override.yml -f docker-compose.build.yml up --build

down:
	cd deploy && docker-compose down -v

# regenerate requirements.lock (hashes of every pinned version) from requirements.in
lock:
	$(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install --quiet pip-tools
	.venv-lock/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-trusted-host --no-emit-find-links \
		--output-file=requirements.lock requirements.in

clean:
	rm -rf $(VENV) run .mypy_cache .pytest_cache .ruff_cache .hypothesis
