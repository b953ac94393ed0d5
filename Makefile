# Quick start: `make demo` runs the example project, `make test` runs the suite.
# Both create .venv on a fresh clone and install the package with its dev
# extra (the test suite's needs plus lint and build tools); they re-install
# only when pyproject.toml or setup.cfg change.

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
.PHONY: help setup demo test lint format tox tox-smoke bench clean distclean

# `make test` runs the whole suite in .venv (Python 3.11, Django 5.2, DRF);
# `make tox-smoke` runs the tests marked smoke, on the memory backend, in every
# other env of the matrix, two at a time.
SMOKE_ENVS := py310-django52-drf,py310-django52-nodrf,py311-django52-nodrf,$\
	py312-django52-drf,py312-django52-nodrf,py312-django60-drf,py312-django60-nodrf,$\
	py312-django61-drf,py312-django61-nodrf,py313-django52-drf,py313-django52-nodrf,$\
	py313-django60-drf,py313-django60-nodrf,py313-django61-drf,py313-django61-nodrf
SMOKE_ARGS := -q -p no:cacheprovider --no-cov -m smoke \
	-k "not postgres and not mariadb and not redis and not locmem and not sqlite and not nats and not memcached"

help:
	@echo "make demo       run example_project on SQLite at http://127.0.0.1:8000"
	@echo "make test       run the test suite (pass pytest options with ARGS='-k name')"
	@echo "make lint       ruff check, ruff format --check and mypy"
	@echo "make format     apply ruff's fixes and formatting"
	@echo "make tox        run the Python x Django x DRF matrix (ARGS='-e py312-django61-drf')"
	@echo "make tox-smoke  the smoke tests on every env but .venv's, two at a time"
	@echo "make bench      run benchmarks/run_all.py"
	@echo "make clean      remove build artefacts and caches (distclean: also .venv and .tox)"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml setup.cfg | $(PY)
	$(PY) -m pip install --disable-pip-version-check --quiet -e '.[dev]'
	@$(PY) -m pip install --disable-pip-version-check --quiet -e '.[mysql]' 2>/dev/null \
		|| echo "note: mysqlclient did not build (needs libmariadb-dev and pkg-config);" \
			"the MariaDB tests will be skipped"
	@touch $@

setup: $(STAMP)

demo: $(STAMP)
	cd example_project && $(PY) manage.py migrate --noinput \
		&& $(PY) manage.py ensure_demo_user \
		&& $(PY) manage.py runserver 127.0.0.1:8000

# Two pytest-xdist workers: most of the suite waits on servers and sleeps, and
# each worker has its own test databases, SQLite files and Redis key prefixes.
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(ARGS)

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

tox: $(STAMP)
	PATH="$(TOX_PATH)" $(VENV)/bin/tox $(ARGS)

tox-smoke: $(STAMP)
	PATH="$(TOX_PATH)" $(VENV)/bin/tox run-parallel --parallel 2 --parallel-no-spinner \
		-e $(SMOKE_ENVS) -- $(SMOKE_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	rm -rf .coverage .coverage.* htmlcov coverage.xml
	find . \( -path ./.venv -o -path ./.tox -o -path ./.git \) -prune \
		-o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .tox
