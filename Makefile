# Two entry points, both self-contained on a fresh machine (Debian, Python 3.11):
#   make demo   set up .venv and migrate a sample Neptune project into a local MLflow store
#   make test   set up .venv and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[all,test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/neptune-migrate demo

test: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile -q

lint: setup
	$(VENV)/bin/ruff check src tests bench

bench: setup
	$(VENV)/bin/python bench/run_all.py --size $(or $(SIZE),small)

clean:
	rm -rf $(VENV) neptune-migration-demo mlflow-store .neptune-migration
