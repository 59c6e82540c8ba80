# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-quick lint venv clean

$(BIN)/cnnzoo: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/cnnzoo

venv: $(BIN)/cnnzoo

demo: venv
	$(BIN)/cnnzoo train resnet20 --data digits --recipe demo --out runs/demo --overwrite

test: venv
	$(BIN)/python -m pytest -q

test-quick: venv  # while developing: everything but the longer integration tests (CI runs `make test`)
	$(BIN)/python -m pytest -q -m "not slow"

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs
