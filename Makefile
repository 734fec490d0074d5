# Two commands a user needs: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
WORK ?= work
STAMP := $(VENV)/.installed

.PHONY: install demo serve test bench lint clean clean-work

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bankflow demo --work-root $(WORK)

# Prefect server on 127.0.0.1:$${BANKFLOW_PORT:-4200} + work pool + deployments + a worker.
serve: $(STAMP)
	$(BIN)/bankflow serve --work-root $(WORK)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not bench" -q

bench: $(STAMP)
	$(BIN)/python -m pytest -m bench -s -q tests/benchmarks

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy  # [tool.mypy] in pyproject.toml: stages, flows, featurestore, models

# Caches of tools only; the work root (every stage's cached output) stays.
clean:
	rm -rf .pytest_cache .ruff_cache

# Every stage output, feature store and the embedded Prefect's state under $(WORK).
clean-work:
	rm -rf $(WORK)
