# The project's commands; README.md lists the two that matter on a fresh machine:
#   make quickstart   create .venv, start the local Kafka, run the quickstart demo
#   make test         create .venv, then lint, type-check and run the whole test suite
#
# Variables: PYTHON (interpreter that creates the venv), PORT (dev broker port for
# quickstart/dev-up/dev-down), PYTEST_ARGS (extra pytest arguments, e.g. PYTEST_ARGS='-k broker -x').

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 9092
PYTEST_ARGS ?=

# Reinstalled only when the package metadata changes.
STAMP := $(VENV)/.ktasks-installed

# The dashboard's browser tests drive Debian's chromium through chromium-driver (never a
# downloaded browser): installed here when missing, with sudo unless we are root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv test test-deps quickstart dev-up dev-down dev-status clean browser peers-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

venv: $(STAMP)

browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; else \
		echo "installing chromium and chromium-driver (Debian packages) for the browser tests"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; \
	fi

# System packages the tests need beyond the venv: PostgreSQL's server binaries (initdb, pg_ctl) for the
# outbox and ctx.claim tests, which start a throwaway server (tests/fixtures/postgres.py). Installed with
# apt-get only when missing (as root, or through sudo).
test-deps: browser
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "$$KTASKS_PG_BIN" ] \
			&& ! command -v initdb >/dev/null 2>&1; then \
		echo "installing PostgreSQL for the tests (apt-get install postgresql)"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q postgresql; \
	fi

# What `python -m benchmarks.peers` compares ktasks with (not needed by the tests): Celery on Redis and on
# kombu's Kafka transport, Dramatiq on Redis, at the versions docs/performance.md reports, and redis-server.
peers-deps: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check celery==5.7.0 kombu==5.7.0 \
		confluent-kafka==2.16.2 dramatiq==2.2.1 redis==8.2.0
	@command -v redis-server >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q redis-server; }

test: $(STAMP) test-deps
	$(BIN)/ruff check ktasks tests
	$(BIN)/mypy ktasks
	$(BIN)/pytest $(PYTEST_ARGS)

dev-up: $(STAMP)
	$(BIN)/ktasks dev up --port $(PORT)

dev-down: $(STAMP)
	$(BIN)/ktasks dev down --port $(PORT)

dev-status: $(STAMP)
	$(BIN)/ktasks dev status --port $(PORT)

quickstart: dev-up
	@if [ -f examples/quickstart/run.sh ]; then \
		KTASKS_BOOTSTRAP_SERVERS=127.0.0.1:$(PORT) PATH="$(abspath $(BIN)):$$PATH" \
			bash examples/quickstart/run.sh; \
	else \
		echo "broker is up at 127.0.0.1:$(PORT); worker demo not yet available"; \
	fi

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache
