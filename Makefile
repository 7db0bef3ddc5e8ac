# sipbridge: `make serve` runs a development server, `make test` runs every check.
# Both create .venv and install what they need; `make test` also installs the Debian packages the
# test suite drives (as root, with apt-get, only when missing).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests need, checked with dpkg and installed only when missing.
SYSTEM_PACKAGES := ca-certificates sip-tester sipsak baresip-core
PYTEST_ARGS ?=

.PHONY: serve test install system-deps lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

serve: install
	$(BIN)/sipbridge serve --dev

system-deps:
	@missing=""; \
	for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing; \
	fi

lint: install
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/coverage erase
	$(BIN)/pytest --cov=sipbridge --cov-branch --cov-report=term $(PYTEST_ARGS)

test: system-deps install lint typecheck unit

bench: install
	$(BIN)/python bench/api.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* build src/*.egg-info
