# Two commands do all set-up on a fresh machine with Python 3.11+ and make:
#   make up     the all-in-one stack (creates .venv on first use)
#   make test   lint, types, import contracts and the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: up smoke test lint docs venv clean

$(BIN)/vipwire: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[allinone,dev]'
	@touch $@

venv: $(BIN)/vipwire

up: $(BIN)/vipwire
	$(BIN)/vipwire up $(ARGS)

smoke: $(BIN)/vipwire
	$(BIN)/vipwire up --smoke $(ARGS)

lint: $(BIN)/vipwire
	$(BIN)/ruff check libs services tests
	$(BIN)/ruff format --check libs services tests
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

docs: $(BIN)/vipwire
	$(BIN)/vipwire config reference --update README.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
