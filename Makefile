# Two commands on a fresh machine:
#   make search   set up .venv, then run a small DARTS-PRIME search on the embedded sample
#   make test     set up .venv, then run the tests (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Test files run in parallel processes (pytest-xdist): TensorFlow's graph tracing is
# single-threaded, so two processes keep two cores busy.
TEST_WORKERS ?= 2

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

.PHONY: setup search train test bench
setup: $(VENV)/.installed

search: $(VENV)/.installed
	$(PY) -m dprime_tf.search --flagfile=configs/quick.flags $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests $(ARGS)

bench: $(VENV)/.installed
	$(PY) -m dprime_tf.bench $(ARGS)
