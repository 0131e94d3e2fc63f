# Two targets do all set-up from a fresh clone, idempotently, in .venv:
#   make lab   installs gsnb, prepares the embedded model and opens JupyterLab on tutorials/
#   make test  installs gsnb with its dev extra and runs every test (unit, embedded model, notebooks)
# Both install through constraints.txt, the lock of the versions `make test` last passed with.
# Maintainers: `make lock` refreshes that lock, `make test-latest` is the newest-releases canary.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gsnb-installed
LOCK := constraints.txt
# `make lock` and `make test-latest` empty this to resolve the newest releases instead.
PIP_LOCK ?= -c $(LOCK)
# torch is installed first, at the locked version: on the project's machines its CPU build lies
# on local disk, and with a GPU pip takes the CUDA build of the same release; either way pip
# never swaps in another multi-GB build behind gsnb's back.
TORCH := $(shell grep -m1 '^torch==' $(LOCK))
# $(call pytest,VENV): the test runner of a venv, in small mode, offline.
pytest = CI=$${CI:-} GSNB_SMALL=1 HF_HUB_OFFLINE=1 $(1)/bin/pytest -q -p no:cacheprovider

.PHONY: lab test interop test-latest lock install model bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml $(LOCK) | $(PY)
	$(PY) -m pip install -q $(PIP_LOCK) "$(TORCH)"
	$(PY) -m pip install -q $(PIP_LOCK) -e ".[dev,lab]"
	touch $(STAMP)

install: $(STAMP)

model: install
	$(PY) -m gsnb

lab: model
	$(VENV)/bin/jupyter lab --notebook-dir=tutorials \
	  --ServerApp.default_url=/lab/tree/00_quickstart.ipynb $$([ "$$(id -u)" = 0 ] && echo --allow-root)

test: model
	bash scripts/install_browser.sh
	$(call pytest,$(VENV)) tests tutorials notebooks --nbmake --nbmake-timeout=1800 --durations=15

# gsnb against the peers' own code: SAELens reads and writes the same SAE folders, circuit-tracer
# validates and writes the same graph files. Each peer lives in its own git-ignored venv
# (scripts/peers.py, created on first use). CI runs it after `make test`.
interop: model
	$(call pytest,$(VENV)) interop

# The canary: the newest releases within pyproject.toml's ranges in a throwaway venv, unit tests
# with deprecation warnings (transformers' FutureWarnings) as errors. Not part of CI.
test-latest:
	rm -rf .latest-venv
	$(MAKE) --no-print-directory install VENV=.latest-venv PIP_LOCK=
	.latest-venv/bin/python scripts/versions.py
	$(MAKE) --no-print-directory model VENV=.latest-venv PIP_LOCK=
	$(call pytest,.latest-venv) tests --deselect tests/test_browser.py -W error::FutureWarning

# Refresh the lock: resolve the newest releases in a throwaway venv, run every test there, and
# only if they pass write what was installed to constraints.txt.
lock:
	bash scripts/lock.sh

bench: model
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .latest-venv .lock-venv .pytest_cache .ruff_cache
