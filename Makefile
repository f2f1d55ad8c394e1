# Two entry points, each self-contained on a fresh machine (see README "Quick start").
PY ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
PYTHON := $(VENV)/bin/python

.PHONY: demo test lint toy

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
	$(PYTHON) infer/edit.py reasoning.steps=16 save_frames=true

# ChronoEdit-Toy from nothing (dataset, tokenizer, VAE, pre-encoding, DiT, eval; ~1 h on a 2-core CPU), shipped to
# chronoedit/assets/toy. TOY_WORK holds every intermediate (regenerated from seeds; never committed).
TOY_WORK ?= runs/toy
toy: $(VENV)/.base
	$(PYTHON) tools/make_toy.py --work $(TOY_WORK) --ship

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PYTHON) -m pytest -q
