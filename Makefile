# Targets match the README's commands.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test smoke lint format docs

run:  ## Quick start, first command: install and run the digits VAE pipeline
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -e . && $(VENV)/bin/genpar run configs/digits-vae.yaml

test:  ## Quick start, second command: install with test extras and run every test
	infra/install-test-deps && python3 -m venv $(VENV) && $(VENV)/bin/pip install -e ".[test]" && $(PY) -m pytest

smoke:  ## The tiny pipeline (seconds of training)
	$(VENV)/bin/genpar run configs/tiny.yaml

lint:
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

docs:  ## Regenerate the README's config reference from the pydantic models
	$(PY) -m flows.cli.docs
