# `make run` serves examples/hello; `make test` runs every check. Both set up what they need
# first: Debian packages (as root) and a virtualenv in .venv with the project installed editable.

PYTHON ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
# python3-venv for the virtualenv; a compiler, headers and libsystemd for systemd-python.
APT_PACKAGES := python3-venv python3-dev gcc pkg-config libsystemd-dev curl
STAMP := $(VENV)/.installed
PORT ?= 8000

.PHONY: run test lint unit deps bench clean

deps: $(STAMP)

$(STAMP): pyproject.toml scripts/apt-ensure
	scripts/apt-ensure $(APT_PACKAGES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: deps
	@echo "make run: serving examples/hello on http://127.0.0.1:$(PORT)/ (Ctrl-C stops it)"
	@echo "make run: try  curl http://127.0.0.1:$(PORT)/ping"
	$(BIN)/rip-server examples/hello http:$(PORT)

lint: deps
	$(BIN)/ruff check ripsvc tests bench
	$(BIN)/mypy ripsvc

unit: deps
	$(BIN)/pytest

test: lint unit

bench: deps
	scripts/apt-ensure wrk
	$(BIN)/python bench/worker.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
