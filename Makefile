# Qwen Studio: `make run` starts the studio, `make test` runs every test.
SHELL := /bin/bash
PYTHON_VERSION := $(shell cat .python-version)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PGSTART := pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -1) main start
# The studio fails closed (no debug, no built-in secret key); development and tests ask for debug.
DJANGO_DEBUG ?= true
export DJANGO_DEBUG
REDISSTART := redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log

.PHONY: run test services db chromium clean bench

$(PY):
	@py=$$(command -v python$(PYTHON_VERSION) || pyenv which python$(PYTHON_VERSION) 2>/dev/null || ls $$HOME/.pyenv/versions/$(PYTHON_VERSION)*/bin/python3 2>/dev/null | tail -1); \
	  test -n "$$py" || { echo "Python $(PYTHON_VERSION) is needed (see .python-version)"; exit 1; }; \
	  echo "Creating $(VENV) with $$py"; $$py -m venv $(VENV)

$(STAMP): $(PY) requirements.txt requirements-dev.txt
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# PostgreSQL and Redis are the machine's own; start them only when they don't answer.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || { echo "Starting PostgreSQL"; $(PGSTART); }
	@for i in $$(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
	@redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || { echo "Starting Redis"; $(REDISSTART); }
	@for i in $$(seq 30); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 1; done

db: $(STAMP) services
	$(PY) manage.py ensure_database
	$(PY) manage.py migrate --no-input

chromium:
	@test -x /usr/bin/chromium || { echo "Installing Debian's chromium"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null; }

run: db
	@mkdir -p var
	$(VENV)/bin/honcho -f Procfile start web worker beat $(if $(QWEN_API_KEY),,apisim)

test: $(STAMP) services chromium
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: db
	$(PY) bench/pipeline.py

clean:
	rm -rf $(VENV) var .pytest_cache
