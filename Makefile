# recstream: `make demo` runs everything on the embedded default; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned (a CPU wheel here); the pyproject range stays open for users.
TORCH_SPEC ?= torch==2.13.0
DEMO_ARGS ?=

.PHONY: install install-dev demo test lint bench bench-quick chaos soak clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	$(PY) -m pip check
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip check
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/recstream demo $(DEMO_ARGS)

test: install-dev
	$(PY) -m pytest

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy streams encoders stores serving bench

bench: install-dev
	mkdir -p bench/results
	: > bench/results/latest.jsonl
	for b in broker_io interests encoders index stream serve quality; do \
	  $(PY) bench/$$b.py | tail -n 1 | tee -a bench/results/latest.jsonl; done

bench-quick: install-dev
	for b in broker_io interests encoders index stream serve quality; do \
	  $(PY) bench/$$b.py --quick | tail -n 1; done

# Faults injected under load (docs/reliability.md): one JSON line, the table into the doc.
chaos: install-dev
	mkdir -p bench/results
	$(PY) bench/chaos.py | tee bench/results/chaos.json

# 30 minutes at a steady load: memory, broker CPU, freshness, latency (docs/reliability.md).
soak: install-dev
	mkdir -p bench/results
	$(PY) bench/soak.py | tee bench/results/soak.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
