# The two commands: `make run` (the whole system on one machine) and `make test` (the suite).
# Both install what they need and are idempotent. See README.md.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test venv lint unit

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/cfn-lint template.yaml

unit: venv
	$(PY) -m pytest tests/unit

test: lint
	$(PY) -m pytest
