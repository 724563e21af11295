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

.PHONY: help install demo test bench submit sample shift compare sweep data scores lock clean screenshots

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'
	@echo "  variables: COMP=$(COMP) DATA=$(DATA) ARGS='...' (extra options: python -m pipeline submit --help)"

# GPU=1 adds the CUDA wheels (requirements-gpu.lock, about 2.7 GB); the default is 1 where nvidia-smi exists, GPU= forces CPU
GPU ?= $(if $(shell command -v nvidia-smi 2>/dev/null),1)
FLAVOUR := $(if $(GPU),gpu,cpu)

# Every target needs $(VENV)/.installed; the flavour stamp under it records what was installed. A changed lock
# or flavour rebuilds .venv from scratch: pip never removes what left the lock (say the CUDA wheels).
$(VENV)/.installed: $(VENV)/.installed-$(FLAVOUR)
	@touch $@
$(VENV)/.installed-cpu: requirements.lock
$(VENV)/.installed-gpu: requirements.lock requirements-gpu.lock
$(VENV)/.installed-%:
	@echo "installing $(VENV) ($*): pinned versions from requirements.lock$(if $(filter gpu,$*), + requirements-gpu.lock)"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.lock $(if $(filter gpu,$*),-r requirements-gpu.lock)
	touch $@

install: $(VENV)/.installed ## create .venv with the pinned versions (GPU=1: with the CUDA wheels; default where nvidia-smi exists)

$(SAMPLE)/data: | $(VENV)/.installed
	$(PY) -m pipeline sample $(COMP) $(SAMPLE)

sample: $(SAMPLE)/data ## make the bundled sample data set for COMP under data/sample/

demo: $(VENV)/.installed $(SAMPLE)/data ## the whole pipeline on the bundled sample (COMP=fisheries|amazon|imagefolder)
	$(PY) -m pipeline submit --competition $(COMP) --data $(SAMPLE)/data --solution $(SAMPLE)/solution.csv $(QUICK) $(ARGS)

# pytest's options for `make test`; tests/test_suite_guard.py runs its small suites with exactly these (it reads
# this line). --max-worker-restart=0: a lost worker (a crash in TensorFlow, or a test stopped by its timeout,
# pyproject.toml) fails the run, naming the test. xdist 3.8 would start a new worker instead and, with tests
# still queued, could then wait forever with every worker idle.
PYTEST_OPTIONS := -q -n 2 --dist loadgroup --max-worker-restart=0 --durations=15
# The whole run's wall clock, the last line of defence against a hang no per-test timeout ends (a test holding
# the GIL in native code, xdist itself): a run ends, pass or fail, within 10 minutes (570 s, then 30 s to kill).
# The suite took 7 min 51 s and 8 min 41 s on 2 idle cores on 2026-12-02 (692 tests; 4.5 min for 499 on a faster
# day; 10.6 min once with the machine loaded, load average 6). timeout exits 124 (137
# when it had to kill); --foreground keeps Ctrl-C working (xdist's workers, even a stuck one, end by themselves
# within about 15 s of the run's process: execnet's shutdown).
TEST_BUDGET ?= 570s
test: $(VENV)/.installed ## the test suite (what CI runs); stopped after TEST_BUDGET
	timeout --foreground --kill-after=30 $(TEST_BUDGET) $(PY) -m pytest $(PYTEST_OPTIONS) || { status=$$?; \
	  [[ $$status != 124 && $$status != 137 ]] || echo "make test: stopped after TEST_BUDGET=$(TEST_BUDGET)" >&2; exit $$status; }

# QUICK goes to the benchmarks in the environment: the sweep benchmark times the demo's budget
bench: $(VENV)/.installed ## benchmarks: printed figures and ratios, never timed assertions
	QUICK="$(QUICK)" $(PY) -m benchmarks $(ARGS)

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

lock: ## re-resolve pyproject.toml's pins into requirements.lock and requirements-gpu.lock
	rm -rf /tmp/lock-venv && $(PYTHON) -m venv /tmp/lock-venv
	/tmp/lock-venv/bin/pip install --quiet ".[test]" && /tmp/lock-venv/bin/pip freeze --exclude kaggle-pseudo > requirements.lock
	/tmp/lock-venv/bin/pip install --quiet --dry-run --report /tmp/lock-gpu.json -c requirements.lock ".[gpu]"
	/tmp/lock-venv/bin/python -c 'import json; r = json.load(open("/tmp/lock-gpu.json")); \
	  print("# The CUDA wheels of tensorflow[and-cuda], installed on top of requirements.lock by make install GPU=1 (regenerate: make lock)."); \
	  print("\n".join(sorted(i["metadata"]["name"] + "==" + i["metadata"]["version"] for i in r["install"] \
	                         if i["metadata"]["name"] != "kaggle-pseudo")))' > requirements-gpu.lock

# Two demo runs (the default setting, and the public group alone at ratio 0.33) in a scratch runs folder, their
# runs.html, and both pages at 1280 px by headless Chromium; render.py fails when a page is wider than the window.
SHOTS_RUNS ?= /tmp/kaggle-pseudo-screenshots
CHROMIUM = $(firstword $(foreach b,chromium chromium-browser google-chrome,$(shell command -v $(b) 2>/dev/null)))
SUDO = $(if $(filter 0,$(shell id -u)),,sudo)
screenshots: $(VENV)/.installed $(SAMPLE)/data ## PNGs of a demo run's report.html and of runs.html at 1280 px (installs chromium with apt)
	$(if $(CHROMIUM),,$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)
	rm -rf $(SHOTS_RUNS)
	$(MAKE) --no-print-directory demo ARGS="--runs-dir $(SHOTS_RUNS) --run-name demo"
	$(MAKE) --no-print-directory demo ARGS="--runs-dir $(SHOTS_RUNS) --run-name public-0.33 --pseudo-groups public --pseudo-ratio 0.33"
	$(PY) -m pipeline compare --competition $(COMP) --ledger $(SHOTS_RUNS)/ledger.sqlite
	$(PY) docs/screenshots/render.py --out docs/screenshots --width 1280 $(SHOTS_RUNS)/$(COMP)/demo/report.html $(SHOTS_RUNS)/$(COMP)/runs.html

clean: ## remove .venv, caches and generated samples (keeps data/ downloads and submissions/)
	rm -rf $(VENV) cache data/sample .pytest_cache
