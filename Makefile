# make dev  — run the whole system locally on http://127.0.0.1:3000 (PORT overrides)
# make test — lint, template checks, sam build and the whole test suite
# make build — sam build (.aws-sam/build), then checks the layer holds no boto3/botocore
# make bench — every benchmark → bench/results/*.json → bench/results.md
# make soak — the stateful property test with the long profile
# make openapi — regenerate openapi.json from the handlers
# make reconcile — reconcile the running local stack (make dev) with its ledger
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
SAM_VENV := .venv-sam
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SAM_STAMP := $(SAM_VENV)/.installed
# LiteLLM's proxy (pinned in clients/python/requirements-litellm.txt) with our client, for
# tests/integration/test_litellm.py and the LiteLLM bench; apart from .venv like .venv-sam.
LITELLM_VENV := .venv-litellm
LITELLM_STAMP := $(LITELLM_VENV)/.installed
CLIENT_SOURCES := clients/python/pyproject.toml $(shell find clients/python/src -name '*.py' -o -name py.typed 2>/dev/null)
export PYTHONPATH := $(CURDIR)/layers/common:$(CURDIR)
export SAM_CLI_TELEMETRY := 0
PYTEST_ARGS ?=
PORT ?= 3000
# sam build needs the functions' runtime, Python 3.12, on PATH: the system's or pyenv's.
PYTHON312 = $(firstword $(foreach p,$(shell command -v python3.12 2>/dev/null) \
	$(wildcard $(HOME)/.pyenv/versions/3.12.*/bin/python3.12 /root/.pyenv/versions/3.12.*/bin/python3.12),\
	$(if $(shell $(p) -c 'import sys; print(sys.version_info[:2] == (3, 12))' 2>/dev/null | grep -x True),$(p))))

.PHONY: litellm-venv dev test pytest lint format template-lint unit integration e2e bench soak scale reconcile build openapi clean system-deps lambda-runtime

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q '.[dev]'
	touch $(STAMP)

$(SAM_STAMP): infra/requirements-sam.txt
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install -q --upgrade pip
	env -u PYTHONPATH $(SAM_VENV)/bin/pip install -q -r infra/requirements-sam.txt
	touch $(SAM_STAMP)

# The functions' runtime for the local stack: the template's Python (3.12) with the layer's
# dependencies built for it and the runtime's boto3/botocore, cached in .lambda-runtime/.
lambda-runtime: $(STAMP)
	@test -n "$(PYTHON312)" || { echo "the local stack runs the functions on Python 3.12 (their runtime): install it as python3.12 on PATH or in ~/.pyenv/versions/3.12.* (e.g. pyenv install 3.12) and retry"; exit 1; }
	PYTHON312="$(PYTHON312)" $(PY) -m local.python_runtime

# The proxy and its dependencies once; our client again whenever its sources change.
$(LITELLM_VENV)/.proxy: clients/python/requirements-litellm.txt
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install -q --upgrade pip
	env -u PYTHONPATH $(LITELLM_VENV)/bin/pip install -q -r clients/python/requirements-litellm.txt
	touch $@

$(LITELLM_STAMP): $(LITELLM_VENV)/.proxy $(CLIENT_SOURCES)
	env -u PYTHONPATH $(LITELLM_VENV)/bin/pip install -q './clients/python[litellm]' -r clients/python/requirements-litellm.txt
	env -u PYTHONPATH $(LITELLM_VENV)/bin/pip install -q --no-deps --force-reinstall ./clients/python
	touch $@

litellm-venv: $(LITELLM_STAMP)

dev: $(STAMP) lambda-runtime
	$(PY) -m local

# Chromium for the browser tests comes from Debian (never `playwright install`).
# Debian packages the tests drive: Chromium (browser tests), curl and jq (the README's commands).
system-deps:
	@missing=""; [ -x /usr/bin/chromium ] || missing="chromium"; \
	for tool in curl jq; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else echo "The tests need:$$missing (sudo apt-get install -y$$missing)"; exit 1; fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy layers/common/billing local bench tools clients/python/src
	@# One cache for all functions: mypy checks the layer once and re-checks a module whose
	@# file is another (each function's app.py); a cache per function took 4x as long cold.
	@for dir in functions/*/; do \
		(cd $$dir && MYPYPATH=$(CURDIR)/layers/common $(CURDIR)/$(VENV)/bin/mypy \
			--config-file $(CURDIR)/pyproject.toml --cache-dir $(CURDIR)/.mypy_cache/functions .) || exit 1; \
	done

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

template-lint: $(SAM_STAMP)
	env -u PYTHONPATH $(SAM_VENV)/bin/cfn-lint infra/template.yaml
	env -u PYTHONPATH $(SAM_VENV)/bin/sam validate --lint --template infra/template.yaml --region us-east-1

# The venvs are installed side by side, then the checks run side by side, then the suite as
# two pytest sessions side by side (tools/run_suite.py); `make pytest` is the same tests in
# one session.
test: system-deps
	$(MAKE) -j3 --output-sync=target $(STAMP) $(SAM_STAMP) $(LITELLM_STAMP)
	$(MAKE) -j3 --output-sync=target lint template-lint build lambda-runtime
	$(PY) tools/run_suite.py $(PYTEST_ARGS)

pytest: $(STAMP) $(LITELLM_STAMP) system-deps lambda-runtime
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP) $(LITELLM_STAMP) lambda-runtime
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

e2e: $(STAMP) system-deps lambda-runtime
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

bench: $(STAMP) $(LITELLM_STAMP) lambda-runtime
	PYTHON312="$(PYTHON312)" $(PY) bench/run.py

# Reconciliation over 100,000 ledger entries (about half an hour): kept out of `make test`'s
# time budget, run before a release and by `make bench` (bench/reconcile_scale.py).
scale: $(STAMP) lambda-runtime
	$(PY) -m pytest scale -o timeout=0 $(PYTEST_ARGS)

soak: $(STAMP) lambda-runtime
	STATEFUL_PROFILE=soak $(PY) -m pytest tests/property -o timeout=0 $(PYTEST_ARGS)

openapi: $(STAMP)
	$(PY) tools/openapi.py

reconcile: $(STAMP)
	$(PY) -m tools.reconcile --local http://127.0.0.1:$(PORT)

build: $(STAMP) $(SAM_STAMP)
	@test -n "$(PYTHON312)" || { echo "make build: sam build needs Python 3.12 (the functions' runtime) as python3.12 on PATH or in ~/.pyenv/versions/3.12.*; install it (e.g. pyenv install 3.12) and retry"; exit 1; }
	env -u PYTHONPATH PATH="$(dir $(PYTHON312)):$$PATH" $(SAM_VENV)/bin/sam build \
		--template infra/template.yaml --cached --parallel
	@# The functions' own code ships 3.12 bytecode as the layers do (unchecked-hash pycs):
	@# /var/task is read-only, so without it every cold start compiles the handler's modules.
	$(PYTHON312) -m compileall -q -f -j 0 --invalidation-mode unchecked-hash \
		$$(for app in .aws-sam/build/*/app.py; do dirname "$$app"; done)
	$(PY) tools/check_layer.py

clean:
	rm -rf $(VENV) $(SAM_VENV) $(LITELLM_VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache .hypothesis tests/artifacts .lambda-runtime
