# Two commands for a fresh machine: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test bench clean

$(STAMP): pyproject.toml constraints.txt scripts/install-browser.sh scripts/install-postgres.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	sh scripts/install-browser.sh $(PY)
	sh scripts/install-postgres.sh
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/zennbot run

# The whole suite twice: on SQLite, then with every test's store on a throwaway PostgreSQL.
# Three workers: most tests wait on servers, browsers and timers, not on the CPU.
test: setup
	$(PY) -m pytest -n 3
	ZENNBOT_TEST_STORE=postgres $(PY) -m pytest -n 3

bench: setup
	$(VENV)/bin/zennbot bench

clean:
	rm -rf $(VENV) .pytest_cache
