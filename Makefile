# Two set-up commands (see README): `make demo` and `make test`. Each creates or
# refreshes .venv at the repository root from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint bench dashboard clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@ $(VENV)/.core

demo: $(VENV)/.core
	$(BIN)/kinetic-jax margin examples/reference_book.toml

# The test session's JAX compilation cache is kept between runs in .pytest_cache
# (tests/conftest.py; a clean clone, as on CI, starts cold). So is Python's
# bytecode, even where the environment sets PYTHONDONTWRITEBYTECODE: each xdist
# worker then collects the suite in 3.7 s instead of 7.0 s (its test modules'
# assertion rewriting and kinetic_jax's modules are not compiled again), and each
# subprocess imports kinetic_jax a little faster.
TEST_CACHE := KINETIC_JAX_TEST_CACHE_DIR=$(CURDIR)/.pytest_cache/jax-compilation \
	PYTHONDONTWRITEBYTECODE=

test: $(VENV)/.test
	$(BIN)/ruff check kinetic_jax tests experiments notebooks
	$(TEST_CACHE) $(BIN)/python -m pytest -n 2 --dist loadgroup --no-loadscope-reorder

# Inner loop: everything but the tests marked slow and the browser tests (README).
test-fast: $(VENV)/.test
	$(BIN)/ruff check kinetic_jax tests experiments notebooks
	$(TEST_CACHE) $(BIN)/python -m pytest -n 2 --dist loadgroup --no-loadscope-reorder \
		-m "not slow and not browser"

lint: $(VENV)/.test
	$(BIN)/ruff check kinetic_jax tests experiments notebooks

dashboard: $(VENV)/.test
	$(BIN)/kinetic-jax dashboard

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
