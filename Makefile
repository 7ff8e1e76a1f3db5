# Two commands for a fresh machine: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test bench clean

$(STAMP): pyproject.toml constraints.txt scripts/install-browser.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	sh scripts/install-browser.sh $(PY)
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/zennbot run

test: setup
	$(PY) -m pytest

bench: setup
	$(VENV)/bin/zennbot bench

clean:
	rm -rf $(VENV) .pytest_cache
