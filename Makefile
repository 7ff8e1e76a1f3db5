# Two commands for a fresh machine: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
UV := uv==0.13.10

.PHONY: setup run test bench clean

# uv installs the pinned set in about 15 s where pip takes 45. The venv starts without pip (its
# own copy costs 7 s): the system's pip puts uv in it. Where either is missing, or uv cannot
# reach an index: the venv's own pip.
$(STAMP): pyproject.toml constraints.txt scripts/install-browser.sh scripts/install-postgres.sh
	$(PYTHON) -m venv --without-pip $(VENV)
	{ $(PYTHON) -m pip --python $(PY) install --quiet $(UV) \
	  && $(PY) -m uv pip install --quiet --python $(PY) --compile-bytecode -c constraints.txt -e '.[dev]'; } \
	  || { $(PY) -m ensurepip --upgrade --default-pip > /dev/null && $(PY) -m pip install --quiet --upgrade pip \
	       && $(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'; }
	sh scripts/install-browser.sh $(PY)
	sh scripts/install-postgres.sh
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/zennbot run

# The suite once, on SQLite; the store contract, multi-process and replica tests also on a
# throwaway PostgreSQL (tests/pg.py). Six workers on two cores: most tests wait on servers,
# browsers and timers, not on the CPU (measured here: 4 workers 3:29, 6 3:08, 8 3:26, CPU-bound);
# idle workers take tests from busy ones (worksteal).
# A failing test is run again, at most twice, and reported as rerun: a few multi-process crash
# tests still miss their deadlines now and then on this 2-core machine (see the README).
# (`ZENNBOT_TEST_STORE=postgres` puts every test on PostgreSQL.)
# Byte-compiled first: where PYTHONDONTWRITEBYTECODE is set (CI machines), each of the ~100
# `zennbot` processes the suite starts would otherwise compile the checkout's modules again.
# Only the plugins the suite uses: pytest rewrites the asserts of every module of a package that
# ships a plugin (all of LangSmith, anyio and Hypothesis), about 3.5 CPU-s in each worker.
# Node keeps its compiled Playwright driver, about 0.2 CPU-s of each of the ~100 driver starts.
test: setup
	$(PY) -m compileall -q bot agent adapters bench tests > /dev/null
	PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 NODE_COMPILE_CACHE=$(abspath $(VENV))/node-compile-cache \
	  $(PY) -m pytest -p xdist.plugin -p pytest_asyncio.plugin -p pytest_rerunfailures -p _hypothesis_pytestplugin \
	  -n 6 --dist worksteal --reruns 2

bench: setup
	$(VENV)/bin/zennbot bench

clean:
	rm -rf $(VENV) .pytest_cache
