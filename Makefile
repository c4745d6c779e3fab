# Qwen Studio: `make run` starts the studio, `make test` runs every test.
SHELL := /bin/bash
PYTHON_VERSION := $(shell cat .python-version)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PG_ETC := /etc/postgresql
PG_PORT := 5432
REDIS_PORT := 6379
PGSTART := pg_ctlcluster --skip-systemctl-redirect $$(ls $(PG_ETC) | head -1) main start
# The studio fails closed (no debug, no built-in secret key); development and tests ask for debug.
DJANGO_DEBUG ?= true
export DJANGO_DEBUG
REDISSTART := redis-server --daemonize yes --bind 127.0.0.1 -::1 --port $(REDIS_PORT) --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log

.PHONY: run test services db test-tools clean bench

$(PY):
	@py=$$(command -v python$(PYTHON_VERSION) || pyenv which python$(PYTHON_VERSION) 2>/dev/null || ls $$HOME/.pyenv/versions/$(PYTHON_VERSION)*/bin/python3 2>/dev/null | tail -1); \
	  test -n "$$py" || { echo "Python $(PYTHON_VERSION) is needed (see .python-version)"; exit 1; }; \
	  echo "Creating $(VENV) with $$py"; $$py -m venv $(VENV)

$(STAMP): $(PY) requirements.txt requirements-dev.txt
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# PostgreSQL and Redis are the machine's own: started when installed but stopped, installed with apt
# on Debian or Ubuntu when missing (and then let in over loopback without a password, as
# DATABASE_URL's default expects), and elsewhere asked for in one line. Ports are probed with
# bash's /dev/tcp, so that no client tool is needed before they exist.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
answers = (exec 3<>/dev/tcp/127.0.0.1/$(1)) 2>/dev/null
services:
	@if ! $(call answers,$(PG_PORT)); then \
	  if ! ls $(PG_ETC)/*/main >/dev/null 2>&1; then \
	    command -v apt-get >/dev/null || { echo "PostgreSQL is needed on 127.0.0.1:$(PG_PORT): install PostgreSQL 15 or newer and start it"; exit 1; }; \
	    echo "Installing PostgreSQL with apt"; \
	    $(APT) update -qq && $(APT) install -y -qq postgresql >/dev/null && \
	    hba=$$(ls $(PG_ETC)/*/main/pg_hba.conf | head -1) && \
	    $(SUDO) sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$$hba" || exit 1; \
	    ! $(call answers,$(PG_PORT)) || $(SUDO) $(PGSTART:start=reload); \
	  fi; \
	  $(call answers,$(PG_PORT)) || { echo "Starting PostgreSQL"; $(SUDO) $(PGSTART) || exit 1; }; \
	  for i in $$(seq 30); do $(call answers,$(PG_PORT)) && break; sleep 1; done; \
	fi
	@if ! $(call answers,$(REDIS_PORT)); then \
	  if ! command -v redis-server >/dev/null; then \
	    command -v apt-get >/dev/null || { echo "Redis is needed on 127.0.0.1:$(REDIS_PORT): install Redis 7 or newer and start it"; exit 1; }; \
	    echo "Installing Redis with apt"; \
	    $(APT) update -qq && $(APT) install -y -qq redis-server >/dev/null || exit 1; \
	  fi; \
	  $(call answers,$(REDIS_PORT)) || { echo "Starting Redis"; $(SUDO) $(REDISSTART) || exit 1; }; \
	  for i in $$(seq 30); do $(call answers,$(REDIS_PORT)) && break; sleep 1; done; \
	fi

db: $(STAMP) services
	$(PY) manage.py ensure_database
	$(PY) manage.py migrate --no-input

# What the tests use beyond Python: Debian's Chromium (with CJK fonts) for the browser tests, and GNU
# gettext's xgettext and msgfmt for the translation tests.
test-tools:
	@test -x /usr/bin/chromium && command -v msgfmt >/dev/null || { \
	  command -v apt-get >/dev/null || { echo "Chromium (/usr/bin/chromium) and GNU gettext are needed: install them"; exit 1; }; \
	  echo "Installing Debian's chromium and gettext"; \
	  $(APT) update -qq && $(APT) install -y -qq chromium fonts-noto-cjk gettext >/dev/null; }

run: db
	@mkdir -p var
	$(VENV)/bin/honcho -f Procfile start web worker beat $(if $(QWEN_API_KEY),,apisim)

test: $(STAMP) services test-tools
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: db
	$(PY) bench/pipeline.py

clean:
	rm -rf $(VENV) var .pytest_cache
