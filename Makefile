# Every target installs what it needs into .venv itself; a fresh clone needs only python3 + make.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The dev/test install pins torch to the CPU wheel on local disk; the library accepts a range.
TORCH_PIN := torch==2.13.0
PY_SOURCES := retune tests benchmarks

.PHONY: demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev,demo]" "$(TORCH_PIN)"
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(PY) -m pip install -q -e ".[bench]" "$(TORCH_PIN)"
	touch $@

demo: $(VENV)/.installed-dev
	$(VENV)/bin/retune demo

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -p no:cacheprovider

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/logging_overhead.py
	$(PY) benchmarks/command_latency.py
	$(PY) benchmarks/checkpoint_io.py

clean:
	rm -rf $(VENV) .retune .pytest_cache .mypy_cache .ruff_cache
