# Pseudo-labeling pipeline for Kaggle image competitions. `make` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
COMP ?= fisheries
DATA ?= data/$(COMP)
SAMPLE := data/sample/$(COMP)
ARGS ?=
RATIOS ?= 0 0.1 0.25 0.33
GROUPS ?= public private public,private
MESSAGE ?=
# the demo's training budget: about 2 minutes on 2 CPU cores (QUICK= runs the full defaults)
QUICK ?= --epochs 12 --student-epochs 3 --min-steps 100 --pseudo-rounds 1
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: help install demo test bench submit sample shift compare sweep data scores lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'
	@echo "  variables: COMP=$(COMP) DATA=$(DATA) ARGS='...' (extra options: python -m pipeline submit --help)"

$(VENV)/.installed: requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

install: $(VENV)/.installed ## create .venv with the pinned versions (requirements.lock)

$(SAMPLE)/data: | $(VENV)/.installed
	$(PY) -m pipeline sample $(COMP) $(SAMPLE)

sample: $(SAMPLE)/data ## make the bundled sample data set for COMP under data/sample/

demo: $(VENV)/.installed $(SAMPLE)/data ## the whole pipeline on the bundled sample (COMP=fisheries|amazon|imagefolder)
	$(PY) -m pipeline submit --competition $(COMP) --data $(SAMPLE)/data --solution $(SAMPLE)/solution.csv $(QUICK) $(ARGS)

test: $(VENV)/.installed ## the test suite (what CI runs)
	$(PY) -m pytest -q -n 2 --dist loadgroup

bench: $(VENV)/.installed ## benchmarks: printed figures and ratios, never timed assertions
	$(PY) -m benchmarks $(ARGS)

submit: $(VENV)/.installed ## the pipeline on real data: COMP, DATA, ARGS; UPLOAD=1 MESSAGE="..." uploads to Kaggle
	$(PY) -m pipeline submit --competition $(COMP) --data $(DATA) $(if $(UPLOAD),--upload --message "$(MESSAGE)") $(ARGS)

shift: $(VENV)/.installed ## distribution-shift report: train vs public vs private images
	$(PY) -m pipeline shift --competition $(COMP) --data $(DATA) $(ARGS)

compare: $(VENV)/.installed ## table and plot of every recorded run of COMP
	$(PY) -m pipeline compare --competition $(COMP) $(ARGS)

sweep: $(VENV)/.installed ## grid of pseudo-label settings (RATIOS, GROUPS) reusing the cached teacher
	$(PY) -m pipeline sweep --competition $(COMP) --data $(DATA) --ratios $(RATIOS) --groups $(GROUPS) $(ARGS)

data: $(VENV)/.installed ## download COMP into DATA: zip/7z/tar extracted with guards, layout and test ids checked
	$(PY) -m pipeline data --competition $(COMP) --data $(DATA) $(ARGS)

scores: $(VENV)/.installed ## sync public/private Kaggle scores of past submissions into the ledger (ARGS="--ledger PATH")
	$(PY) -m pipeline scores --competition $(COMP) $(ARGS)

lock: ## re-resolve pyproject.toml's pins into requirements.lock
	rm -rf /tmp/lock-venv && $(PYTHON) -m venv /tmp/lock-venv
	/tmp/lock-venv/bin/pip install --quiet ".[test]" && /tmp/lock-venv/bin/pip freeze --exclude kaggle-pseudo > requirements.lock

clean: ## remove .venv, caches and generated samples (keeps data/ downloads and submissions/)
	rm -rf $(VENV) cache data/sample .pytest_cache
