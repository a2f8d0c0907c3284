# Two commands matter (README, Quick start): `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SCENARIO ?= include/demo-fleet.yaml
DEMO_OUT ?= ./demo-output
export PYTHONPATH := $(CURDIR)/plugins:$(CURDIR)

.PHONY: venv demo test lint simulator clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m include.demo --scenario "$(SCENARIO)" --out "$(DEMO_OUT)"

test: venv
	$(PY) -m ruff check dags plugins include simulator tests bench
	$(PY) -m pytest -q tests

lint: venv
	$(PY) -m ruff check dags plugins include simulator tests bench

simulator: venv
	$(PY) -m simulator --scenario "$(SCENARIO)" --control-port 5990

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
