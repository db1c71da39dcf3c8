# The two commands: `make run` (the whole system on one machine) and `make test` (the suite).
# Both install what they need and are idempotent; when everything is in place the set-up steps
# take a second or two. See README.md and docs/development.md.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# One id per `make test`: every Docker object the tests make is labelled dit4c.test-run=$(TEST_RUN),
# and exactly those are removed afterwards (other people's runs on a shared engine are left alone).
ifndef TEST_RUN
TEST_RUN := $(shell $(PYTHON) -c 'import uuid; print(uuid.uuid4().hex[:12])')
endif
# Leftovers of killed runs older than this many minutes are removed too.
STALE_MINUTES ?= 120
PYTEST_ARGS ?= --durations=25

.PHONY: run test venv deps images lint unit bench clean-test package checkov dist

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV) || { echo "make: '$(PYTHON) -m venv' failed (Debian: apt-get install python3-venv)"; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# Debian packages from scripts/apt-packages.txt and a Docker engine that answers.
deps:
	bash scripts/ensure_docker.sh

# The local images (never pulled): reused when their recipe hash label matches.
images: venv deps
	$(PY) -m scripts.build_images

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/cfn-lint template.yaml

unit: venv
	$(PY) -m pytest tests/unit

# Everything; exits non-zero on any failure and removes what this run's tests left in Docker.
test: venv deps images lint
	@echo "make test: test run $(TEST_RUN)"
	DIT4C_REQUIRE_DOCKER=1 DIT4C_TEST_RUN=$(TEST_RUN) $(PY) -m pytest -ra $(PYTEST_ARGS); \
	rc=$$?; \
	$(PY) -m scripts.cleanup --run $(TEST_RUN); \
	$(PY) -m scripts.cleanup --stale $(STALE_MINUTES); \
	exit $$rc

clean-test: venv
	$(PY) -m scripts.cleanup --stale 0

# The embedded local stack in the foreground (Ctrl-C stops it); see docs/local-stack.md.
run: venv deps images
	$(PY) -m infra.local run

# The Lambda artifact build/lambda.zip (requirements.txt + control_plane/ + protocol/) for the
# template's runtime and architecture; prints its size. Deploying: docs/deploy.md.
package: venv
	$(PY) -m infra.package

# The node daemon's wheel (dist/dit4c-<version>-py3-none-any.whl: node_daemon/ and protocol/,
# the `node` dependency group, entry point dit4c-node); see docs/node-daemon.md.
dist: venv
	$(PY) -m scripts.dist

# checkov over infra/terraform, from its own virtualenv in the cache directory (scripts/checkov.py).
checkov: venv
	$(PY) -m scripts.checkov

# Each bench/<name>.py module measures one part against the same work done directly.
bench: venv deps images
	@set -e; for f in bench/[a-z]*.py; do \
		[ -e "$$f" ] || continue; \
		m=bench.$$(basename $$f .py); echo "== $$m"; $(PY) -m $$m; \
	done
