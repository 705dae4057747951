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

.PHONY: install run test bench clean ui

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/layerwise run $(PIPELINE) $(ARGS)

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf .layerwise

ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath mlruns/mlflow.db)
