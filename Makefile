# Two commands on a fresh machine: `make dev` runs the product, `make test` passes the tests.
# Each sets up what it needs: a virtualenv with LeadPulse, and a redis-server if there is none.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: dev test bench services clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

services:
	@scripts/ensure-services

dev: $(VENV)/.installed services
	$(VENV)/bin/leadpulse dev

test: $(VENV)/.installed services
	$(PY) -m pytest

bench: $(VENV)/.installed services
	$(VENV)/bin/leadpulse bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
