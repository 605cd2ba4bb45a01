# Goldleaves: `make run` serves the API with a job worker, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
# The embedded PostgreSQL's folder (stop, clean-data): EMBEDDED_DB_DIR from the environment, else .data
DATA_DIR ?= $(or $(EMBEDDED_DB_DIR),.data)

.PHONY: run test venv env setup lint format clean-data stop superuser bench bench-quick

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

# .env from .env.example with a generated development secret and DEBUG=true (first run only).
.env:
	$(PYTHON) scripts/make_env.py

env: .env

setup: venv .env
	$(PY) manage.py migrate --noinput
	$(PY) manage.py setup_demo

# The API (gunicorn: WEB_WORKERS x WEB_THREADS, goldleaves/gunicorn_conf.py) and one job
# worker (manage.py procrastinate worker), together: honcho
# runs the two lines of Procfile.dev with the virtualenv first on PATH, prefixes their output
# (web.1 | ..., worker.1 | ...), and stops both on Ctrl-C or when either exits. Django reads
# .env itself, so honcho is given none (--env /dev/null). On exit (Ctrl-C reaches this shell
# too: its trap lets it outlive honcho) it says how to stop the embedded PostgreSQL.
run: setup
	@echo "Serving the API on http://$(HOST):$(PORT)/ (docs at /api/docs/) with one job worker; Ctrl-C stops both"
	@trap 'true' INT TERM; \
	GOLDLEAVES_ADDR=$(HOST):$(PORT) PATH="$(abspath $(VENV))/bin:$$PATH" \
		$(VENV)/bin/honcho start --env /dev/null --procfile Procfile.dev; \
	status=$$?; $(PYTHON) scripts/embedded_db.py hint; exit $$status

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The embedded PostgreSQL (goldleaves/embedded_db.py, data under .data/) outlives `make run`
# (the next start is quicker); `make stop` stops it (a fast shutdown, then waits).
stop:
	$(PYTHON) scripts/embedded_db.py stop $(DATA_DIR)

# Deletes the embedded database's data: refused (exit 1) while its server is running.
clean-data:
	$(PYTHON) scripts/embedded_db.py require-stopped $(DATA_DIR)
	rm -rf $(DATA_DIR)

# A staff login for the admin (/admin/ and the usage dashboard /admin/usage/): asks for an
# email and a password (Django's createsuperuser).
superuser: setup
	$(PY) manage.py createsuperuser

# Benchmarks (bench/): every bench/*.py in a fixed order, a table of figures beside their
# baselines, and bench/results/latest.json. Uses wrk when it is on PATH (apt-get install wrk),
# else a built-in asyncio load generator. bench-quick: small sizes (a few minutes).
bench: venv
	$(PY) bench/run.py

bench-quick: venv
	$(PY) bench/run.py --quick
