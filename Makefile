# make run / make test create .venv themselves on a fresh machine (only Python 3.11 needed).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck check sim bench drills clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/histdata run $(if $(CONFIG),-c $(CONFIG),)

sim: $(STAMP)
	$(BIN)/histdata sim

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check histdata tests bench
	$(BIN)/ruff format --check histdata tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP)
	.ci/with-timescale $(BIN)/python -m bench

drills: $(STAMP)
	$(BIN)/python -m bench.drills

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
