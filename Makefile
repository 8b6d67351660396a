# Two commands on a fresh machine: `make dev` runs the product, `make test` passes the tests.
# Each sets up what it needs and no more: `make dev` a virtualenv with LeadPulse and a
# redis-server; `make test` also the test dependencies and tools (scripts/ensure-services).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: dev test bench services test-services clean

$(PY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip

# the product and its runtime dependencies
$(VENV)/.product: pyproject.toml | $(PY)
	$(VENV)/bin/pip install --quiet -e .
	touch $@

# … and what the tests use (pytest, hypothesis, the analysis tools, the Segment client)
$(VENV)/.installed: pyproject.toml | $(PY)
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

services:
	@scripts/ensure-services dev

test-services:
	@scripts/ensure-services test

dev: $(VENV)/.product services
	$(VENV)/bin/leadpulse dev

test: $(VENV)/.installed test-services
	$(PY) -m pytest

bench: $(VENV)/.product services
	$(VENV)/bin/leadpulse bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
