# The README's two commands: `make demo` and `make test`. Each sets itself up (idempotently) first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
AZURITE := node_modules/.bin/azurite
# pip's index configuration on some machines names folders that do not exist; keep that noise out of the log.
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: setup demo test bench load clean

setup: $(STAMP) $(AZURITE)

$(STAMP): requirements.txt requirements-local.txt requirements-dev.txt pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q -r requirements-dev.txt 2>&1 | $(QUIET_PIP)
	$(VPY) -m pip install -q --no-deps -e . 2>&1 | $(QUIET_PIP)
	touch $@

$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: setup
	$(VPY) -m chatft_local demo

# Two workers, one test file each at a time (a file's module fixtures, such as a deployed model, are built once);
# the controller starts one Azurite for both (tests/conftest.py).
test: setup
	$(VPY) -m pytest -q -n 2 --dist loadfile

LITELLM_VENV := .venv-litellm
LITELLM_STAMP := $(LITELLM_VENV)/.installed

# The proxy benchmark's anchor (LiteLLM) in a venv of its own: bench only, never `make test`.
$(LITELLM_STAMP): bench/requirements.txt
	test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install -q -r bench/requirements.txt 2>&1 | $(QUIET_PIP)
	touch $@

bench: setup $(LITELLM_STAMP)
	$(VPY) bench/cold_start.py

# Issue 17's load (bench/load.py): 50 uploads in ~10 s, 5 overwrites while validating, 5 deeply nested, through the
# local host; prints the ledger and fails on any run left behind or made twice. Minutes of CPU: not in `make test`.
load: setup
	$(VPY) bench/load.py

clean:
	rm -rf $(VENV) $(LITELLM_VENV) node_modules .chatft .pytest_cache .hypothesis
