# Two commands matter (README, Quick start): `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SCENARIO ?= include/demo-fleet.yaml
DEMO_OUT ?= ./demo-output
export PYTHONPATH := $(CURDIR)/plugins:$(CURDIR)

.PHONY: venv browser postgres redis compose demo demo-restore preflight demo-cluster demo-outage ui test bench lint simulator clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

demo-outage: venv postgres
	$(PY) -m include.outage --scenario "$(SCENARIO)" --out "$(DEMO_OUT)"

demo: venv
	$(PY) -m include.demo --scenario "$(SCENARIO)" --out "$(DEMO_OUT)" $(if $(INVENTORY),--inventory "$(INVENTORY)")

# The demo, then one restore test per host (hyperv_restore_test): a copy of a backup booted, isolated, and removed.
demo-restore: venv
	$(PY) -m include.demo --restore --scenario "$(SCENARIO)" --out "$(DEMO_OUT)" $(if $(INVENTORY),--inventory "$(INVENTORY)")

# Every host of the fleet (or of INVENTORY) checked before its first backup: DEMO_OUT/preflight.json; exit 1 when a check fails.
preflight: venv
	$(PY) -m include.demo --preflight --scenario "$(SCENARIO)" --out "$(DEMO_OUT)" $(if $(INVENTORY),--inventory "$(INVENTORY)")

# The demo on the distributed engine: two Celery workers, Redis, PostgreSQL (metadata and catalog), on 127.0.0.1.
demo-cluster: venv postgres redis
	$(PY) -m include.demo --cluster --scenario "$(SCENARIO)" --out "$(DEMO_OUT)" $(if $(INVENTORY),--inventory "$(INVENTORY)")

# The Airflow UI over the demo's Airflow home (DEMO_OUT/airflow), on 127.0.0.1:$(UI_PORT).
UI_PORT ?= 8080
ui: venv
	$(PY) -m include.ui --out "$(DEMO_OUT)" --port $(UI_PORT)

# Debian's Chromium, for the test that opens the HTML report headless.
browser:
	@command -v chromium >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; }

# Debian's PostgreSQL server, for the tests that run the catalog on it (include/postgres.py starts a throwaway one).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends postgresql; }

# Debian's Redis server, the Celery broker of `make demo-cluster` (include/redis_server.py starts a throwaway one).
redis:
	@command -v redis-server >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends redis-server; }

# Debian's docker-compose (1.29), a real Compose implementation to validate docker-compose.yaml with (no engine needed).
compose:
	@command -v docker-compose >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends docker-compose; }

test: venv browser postgres redis compose
	$(PY) -m ruff check dags plugins include simulator tests bench
	$(PY) -m pytest -q -n 2 --durations=25 tests  # in two lanes (tests/conftest.py); the slowest 25 printed

bench: venv
	$(PY) -m bench.pipeline
	$(PY) -m bench.scheduler
	$(PY) -m bench.report
	$(PY) -m bench.parse
	$(PY) -m bench.winrm_session

lint: venv
	$(PY) -m ruff check dags plugins include simulator tests bench

simulator: venv
	$(PY) -m simulator --scenario "$(SCENARIO)" --control-port 5990

# Removes only what the demo wrote (include/demo_out.py decides), never a folder of other files.
clean:
	$(PY) -m include.demo_out "$(DEMO_OUT)"
	rm -rf .pytest_cache
