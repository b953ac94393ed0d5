# Quick start: `make demo` runs the example project, `make test` runs the suite.
# Both create .venv on a fresh clone and install the package with its test
# extra; they re-install only when pyproject.toml or setup.cfg change.

PYTHON ?= python3
VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

# tox looks for python3.X on PATH; pyenv's shims only answer for selected
# versions, so `make tox` puts every installed 3.1x interpreter's bin first.
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo "$$HOME/.pyenv")
empty :=
space := $(empty) $(empty)
PYENV_BINS := $(subst $(space),:,$(strip $(wildcard $(PYENV_ROOT)/versions/3.1[0-9].*/bin)))
TOX_PATH := $(if $(PYENV_BINS),$(PYENV_BINS):)$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup demo test lint format tox bench clean distclean

help:
	@echo "make demo       run example_project on SQLite at http://127.0.0.1:8000"
	@echo "make test       run the test suite (pass pytest options with ARGS='-k name')"
	@echo "make lint       ruff check, ruff format --check and mypy"
	@echo "make format     apply ruff's fixes and formatting"
	@echo "make tox        run the Python x Django matrix (ARGS='-e py312-django61')"
	@echo "make bench      run benchmarks/run_all.py"
	@echo "make clean      remove build artefacts and caches (distclean: also .venv and .tox)"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml setup.cfg | $(PY)
	$(PY) -m pip install --disable-pip-version-check --quiet -e '.[test]'
	@$(PY) -m pip install --disable-pip-version-check --quiet -e '.[mysql]' 2>/dev/null \
		|| echo "note: mysqlclient did not build (needs libmariadb-dev and pkg-config);" \
			"the MariaDB tests will be skipped"
	@touch $@

setup: $(STAMP)

demo: $(STAMP)
	cd example_project && $(PY) manage.py migrate --noinput \
		&& $(PY) manage.py ensure_demo_user \
		&& $(PY) manage.py runserver 127.0.0.1:8000

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

# Runs all three checks and fails if any failed, so one run shows every problem.
lint: $(STAMP)
	@status=0; \
	echo "+ ruff check ."; $(PY) -m ruff check . || status=1; \
	echo "+ ruff format --check ."; $(PY) -m ruff format --check . || status=1; \
	echo "+ mypy"; $(PY) -m mypy || status=1; \
	exit $$status

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

$(VENV)/bin/tox: | $(PY)
	$(PY) -m pip install --disable-pip-version-check --quiet 'tox>=4.2'

tox: $(VENV)/bin/tox
	PATH="$(TOX_PATH)" $(VENV)/bin/tox $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	rm -rf .coverage .coverage.* htmlcov coverage.xml
	find . \( -path ./.venv -o -path ./.tox -o -path ./.git \) -prune \
		-o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .tox
