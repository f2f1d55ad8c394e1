# Two entry points, each self-contained on a fresh machine (see README "Quick start").
PY ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
PYTHON := $(VENV)/bin/python

.PHONY: demo test lint

# torch is pinned to 2.13.0 (CPU wheel); install it first so nothing pulls a CUDA build.
$(VENV)/.base: setup.py
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) install -q -e ".[test,dev]"
	touch $@

demo: $(VENV)/.base
	$(PYTHON) infer/edit.py

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PYTHON) -m pytest -q
