# Two commands matter: `make run` (the main job on embedded defaults) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEV_ARGS ?=
SIZE ?= 1000000
BENCH_STAMP := $(VENV)/.installed-bench
# Every dependency comes from a hashed lock (`make lock` regenerates both; see scripts/lock.sh).
LOCK := requirements/dev.lock
BENCH_LOCK := requirements/bench.lock
PIP := $(BIN)/python -m pip --disable-pip-version-check
LOCK_ARGS ?=

.PHONY: install run test dev lint clean db-stop reliability bench lock browser

# pip itself first (its pinned, hashed entry in the lock: a venv's own pip may be too old for hash mode with extras,
# e.g. 23.2 rejects gql[requests]), then the lock, then the project alone: editable, no dependencies, built by the
# locked setuptools. `pip check` catches a pyproject.toml edited without `make lock`.
$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 is required (found: $$($(PYTHON) --version))"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --require-hashes --no-deps -r <(awk '/^[^ #]/ { keep = /^pip==/ } keep' $(LOCK))
	$(PIP) install --quiet --require-hashes -r $(LOCK)
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	@$(PIP) check >/dev/null || { $(PIP) check; echo "$(LOCK) does not satisfy pyproject.toml: run make lock"; exit 1; }
	@touch $(STAMP)

install: $(STAMP)

lock:
	PYTHON=$(PYTHON) $(SHELL) scripts/lock.sh $(LOCK_ARGS)

run: install
	$(BIN)/dm-pipeline run

test: install browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Web flows (the Dagster UI, the OAuth consent page) are tested in Debian's Chromium, driven by Playwright with
# the system browser. Installed here when missing and we may (root, or passwordless sudo); otherwise the browser
# tests say what to install (and fail under CI=true).
browser:
	@command -v chromium >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else \
	  echo "note: Debian's chromium is not installed; the browser tests need it (apt install chromium)"; exit 0; fi; \
	echo "installing Debian's chromium for the browser tests"; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium

# The UI and daemon on what `make run` prepares (database, migrations, and the simulator with its credentials
# for the accounts that point at it), served until dagster dev stops. `make dev DEV_ARGS="-p 3001"`.
dev: install
	exec $(BIN)/dm-pipeline dev $(DEV_ARGS)

lint: install
	$(BIN)/ruff check dm_pipeline tests migrations
	$(BIN)/mypy

db-stop: install
	$(BIN)/dm-pipeline db stop

clean: db-stop
	rm -rf .dm_pipeline $(VENV)

# Full-size reliability figures (CI runs the reduced size as part of `make test`): 60 crash trials,
# the whole fault matrix, the bad-input corpus, Postgres dying mid-run, 200 Hypothesis examples.
reliability: install
	@mkdir -p .dm_pipeline; rm -f .dm_pipeline/reliability-summary.txt
	@DM_RELIABILITY=full DM_RELIABILITY_SUMMARY=.dm_pipeline/reliability-summary.txt \
	  $(BIN)/python -m pytest tests/reliability tests/integration/test_property_sync.py; status=$$?; \
	  cat .dm_pipeline/reliability-summary.txt 2>/dev/null || echo "reliability: no summary (see above)"; \
	  exit $$status

# The throughput benchmark (docs/performance.md): COPY vs dm_pipeline vs dlt, no-op run, peak RSS.
# Writes bench-results.json and bench-results.txt. `make bench SIZE=100000` for a quick run.
$(BENCH_STAMP): $(STAMP) $(BENCH_LOCK)
	$(PIP) install --quiet --require-hashes -r $(BENCH_LOCK)
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.bench --size $(SIZE) --out bench-results.json
