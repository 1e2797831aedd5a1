# Every target installs what it needs into .venv itself; a fresh clone needs only python3 + make.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The dev/test install pins torch to the CPU wheel on local disk; the library accepts a range.
TORCH_PIN := torch==2.13.0
PY_SOURCES := retune tests benchmarks scripts

.PHONY: demo test lint bench screenshots browser clean

$(PY):
	@echo "creating .venv with $(PYTHON)..."
	$(PYTHON) -m venv $(VENV)

# Quiet pip, so say once what the minute of silence is.
$(VENV)/.installed-dev: pyproject.toml | $(PY)
	@echo "installing Retune and PyTorch (CPU) into .venv (about a minute, once)..."
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev,demo]" "$(TORCH_PIN)"
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(PY) -m pip install -q -e ".[bench]" "$(TORCH_PIN)"
	touch $@

# The scripted demo steers itself until someone else sends a command; `retune demo` (no
# --scripted) leaves all the steering to you.
demo: $(VENV)/.installed-dev
	$(VENV)/bin/retune demo --scripted

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)
	$(VENV)/bin/mypy

# The dashboard tests drive Debian's chromium (Playwright with executable_path, no download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "note: sudo apt-get install chromium to run the browser tests (skipped without it)"; \
	  fi; }

# The store's conformance suite also runs on a real PostgreSQL (scripts/postgres.sh starts one).
# Tests run on every core (pytest-xdist, one test file per worker at a time: a file's shared
# trainer or browser is started once); TEST_WORKERS=1 runs them in one process.
TEST_WORKERS ?= auto
test: lint browser
	RETUNE_TEST_POSTGRES_URL="$${RETUNE_TEST_POSTGRES_URL:-$$(bash scripts/postgres.sh)}" \
	  $(VENV)/bin/pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=20

screenshots: $(VENV)/.installed-dev browser
	$(PY) scripts/screenshots.py
	$(PY) scripts/notebook_screenshots.py

# Each benchmark writes benchmarks/results/NAME.json; report.py renders them into
# docs/benchmarks.md (the figures there are generated). BENCH_FLAGS=--quick: reduced sizes.
BENCH_FLAGS ?=
bench: $(VENV)/.installed-bench browser
	$(PY) benchmarks/logging_overhead.py $(BENCH_FLAGS) --out benchmarks/results/logging_overhead.json
	$(PY) benchmarks/command_latency.py $(BENCH_FLAGS) --out benchmarks/results/command_latency.json
	$(PY) benchmarks/checkpoint_io.py $(BENCH_FLAGS) --out benchmarks/results/checkpoint_io.json
	$(PY) benchmarks/checkpoint_stall.py $(BENCH_FLAGS) --out benchmarks/results/checkpoint_stall.json
	$(PY) benchmarks/checkpoint_staging.py --rounds 2
	$(PY) benchmarks/dashboard.py $(BENCH_FLAGS) --out benchmarks/results/dashboard.json
	$(PY) benchmarks/integrations_overhead.py $(BENCH_FLAGS) --out benchmarks/results/integrations_overhead.json
	$(PY) benchmarks/guard.py $(BENCH_FLAGS) --out benchmarks/results/guard.json
	$(PY) benchmarks/distributed_overhead.py $(BENCH_FLAGS) --out benchmarks/results/distributed_overhead.json
	$(PY) benchmarks/export.py $(BENCH_FLAGS) --out benchmarks/results/export.json
	$(PY) benchmarks/report.py

# The full reliability campaign (make test runs its short forms, marked `campaign`): 100 SIGKILLs,
# 8 concurrent trainings on one SQLite store (and on PostgreSQL, as make test starts it),
# >= 2,000 fuzzed requests to a live `retune ui`, 1,000 new random commands for the property test.
# Prints the figures and writes them into docs/reliability.md; fails on any broken promise.
.PHONY: soak
soak: $(VENV)/.installed-dev
	$(PY) scripts/soak.py --doc docs/reliability.md \
	  --postgres "$${RETUNE_TEST_POSTGRES_URL:-$$(bash scripts/postgres.sh)}"

clean:
	rm -rf $(VENV) .retune .pytest_cache .mypy_cache .ruff_cache
