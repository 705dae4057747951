# make run: create .venv if absent, install, run the quickstart pipeline. make test: the test suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIPELINE ?= quickstart
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
# Offline machines carry the official MNIST files beside the checkout.
ifneq ($(wildcard ../shared/data/MNIST/raw),)
export MNIST_ROOT ?= $(abspath ../shared/data)
endif

PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000
# serve talks to the server `make server` starts unless PREFECT_API_URL already points elsewhere
PREFECT_API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api

.PHONY: install run test test-fast test-team report reproduce team-up team-down bench bench-gpu clean ui server serve mlflow-server

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# team mode's extra packages (pyproject's `team` extra), installed on first use
$(VENV)/.team-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,team]'
	touch $@

run: install
	$(VENV)/bin/layerwise run $(PIPELINE) $(ARGS)

test: install
	$(PY) -m pytest -q tests

# An experiment of the MLflow store as a Markdown page with its figures (reports/NAME/report.md);
# ARGS="--tracking-uri http://HOST:PORT" reads a tracking server, ARGS="--out -" prints it
report: install
	$(VENV)/bin/layerwise report $(PIPELINE) $(ARGS)

# Every command behind docs/claims.csv, in an order that reuses stored stages and cells, resuming
# where an earlier call stopped; ends with each claim against the value measured now (exit 1 if one
# is outside its tolerance) and rewrites docs/results.md's marked sections. ONLY=paper,deep-ae: a subset
reproduce: install
	$(VENV)/bin/layerwise reproduce --into docs/results.md $(if $(ONLY),--only $(ONLY)) $(ARGS)

# The fast tier: the math, config and store tests; none that spawns processes, starts servers, runs a
# flow or reads the full MNIST (those are marked slow). Under a minute on 2 cores; CI runs make test.
test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

# Team mode for real (CI runs it after make test): PostgreSQL, MLflow with sign-in and Prefect on loopback
# ports, two sweep workers (one killed), 8 ablation cells on a Dask cluster; about 8 min on 2 cores.
test-team: $(VENV)/.team-installed
	$(PY) -m team check
	$(PY) -m pytest -q --team tests/team

# Not part of make test: speed, overhead, reuse, memory, scaling, and the whole `layerwise run quickstart`
# against a bare PyTorch script, and the CPU section (ISA, fp32/bf16 peaks, quickstart in bf16): about 25 min
# on 2 cores; `ARGS="--only e2e"` or `ARGS="--only cpu"` for one section alone.
bench: install
	$(PY) -m benchmarks.run $(ARGS)

# the GPU check: needs only torch and torchvision (a machine without this project's venv uses python3)
bench-gpu:
	$(if $(wildcard $(PY)),$(PY),python3) -m benchmarks.gpu $(ARGS)

clean:
	rm -rf .layerwise

# Scheduled mode: a Prefect server (database under .prefect/) and, beside it, `make serve`.
server: install
	PREFECT_HOME=$(abspath .prefect) $(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) --analytics-off

serve: install
	PREFECT_API_URL=$(PREFECT_API_URL) $(VENV)/bin/layerwise serve $(ARGS)

# Team mode: one MLflow server over the same store; point runs at it with
# MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT)
mlflow-server: install
	$(VENV)/bin/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) \
		--backend-store-uri sqlite:///$(abspath mlruns/mlflow.db) --artifacts-destination $(abspath mlruns/artifacts)

# Team mode on real servers (docs/operating.md#team-mode): PostgreSQL, MLflow with sign-in and Prefect under
# .layerwise/team/, loopback unless ARGS="--bind ADDR"; team-down stops them (the data stays)
team-up: $(VENV)/.team-installed
	$(PY) -m team up $(ARGS)

team-down: $(VENV)/.team-installed
	$(PY) -m team down

ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath mlruns/mlflow.db)
