# Two commands on a fresh machine:
#   make search   set up .venv, then run a small DARTS-PRIME search on the embedded sample
#   make test     set up .venv, then run the tests (what CI runs)
#   make test-fast   the unit and golden tests only (no end-to-end runs; ~4 minutes)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Test files run in parallel processes (pytest-xdist): TensorFlow's graph tracing is
# single-threaded, so two processes keep two cores busy. Longest files first
# (tests/conftest.py's LONGEST_FIRST, kept by --no-loadscope-reorder).
TEST_WORKERS ?= 2

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

.PHONY: setup search train test test-fast test-golden bench
setup: $(VENV)/.installed

search: $(VENV)/.installed
	$(PY) -m dprime_tf.search --flagfile=configs/quick.flags $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 tests $(ARGS)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" tests $(ARGS)

test-golden: $(VENV)/.installed
	$(PY) -m pytest -q -m golden tests $(ARGS)

bench: $(VENV)/.installed
	$(PY) -m dprime_tf.bench $(ARGS)
