# Two commands for a fresh clone:  `make run` (whole pipeline on the built-in data)  and  `make test`.
# Both create the virtualenv from the committed lock file first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
# two test workers (pytest-xdist; which tests share one: tests/conftest.py); WORKERS= runs them one by one
WORKERS ?= -n 2

.PHONY: help venv run exp-show test test-fast lint params lock venv-lean realtime-size release-model teacher wheel

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

$(BIN)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	touch $@

venv: $(BIN)/.installed  ## create .venv from requirements.lock

run: venv  ## the whole pipeline (prepare, train, quantize, benchmark, evaluate) on the default data
	dvc repro
	@echo "done: metrics in metrics/*.json (dvc metrics show), plots in plots/ (dvc plots show), runs: mlflow ui --backend-store-uri sqlite:///mlflow.db"

exp-show: venv  ## the experiments' headline metrics in 120 columns (dvc exp show --drop/--keep); ARGS=... adds options
	@$(BIN)/python -m pipeline.metrics $(ARGS)

test: venv  ## the whole suite: in-process tests + integration (real dvc repro, mlflow server, PostgreSQL)
	$(BIN)/python -m pytest -q $(WORKERS) $(PYTEST_ARGS)

test-fast: venv  ## the in-process tests only (no dvc/mlflow/database processes): the edit-test loop
	$(BIN)/python -m pytest -q -m "not integration" $(WORKERS) $(PYTEST_ARGS)

lint: venv  ## ruff
	$(BIN)/ruff check .

params: venv  ## regenerate params.yaml from conf/ (the default composition)
	$(BIN)/python -m pipeline.config

lock:  ## re-resolve the lock files from pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra train --extra dev --python-version 3.11 -q -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra headless --python-version 3.11 -q -o requirements-realtime.lock

venv-lean: .venv-lean/.installed  ## the realtime runner alone: no TensorFlow

.venv-lean/.installed: requirements-realtime.lock pyproject.toml
	$(PYTHON) -m venv .venv-lean
	.venv-lean/bin/pip install -q --disable-pip-version-check uv==0.13.9
	.venv-lean/bin/uv pip install -q --python .venv-lean/bin/python -r requirements-realtime.lock
	.venv-lean/bin/uv pip install -q --python .venv-lean/bin/python --no-deps -e .
	touch $@

realtime-size: venv-lean  ## installed size of the realtime runner (lean venv) next to the full venv
	bash benchmarks/lean_size.sh

release-model: venv  ## the bundled release model from the registry: make release-model MODEL=models:/fer-expression-fer2013@champion
	$(BIN)/python -m pipeline.release $(MODEL)

teacher: venv  ## a distillation teacher from the registry into models/teachers/<name>/: make teacher MODEL=models:/fer-expression-fer2013/3
	$(BIN)/python -m pipeline.release --teacher $(MODEL)

DIST ?= dist
wheel: venv  ## the installable runner: a wheel in $(DIST)/ (python -m build), no TensorFlow needed to run it
	$(BIN)/python -m build --wheel --outdir $(DIST) . > /dev/null
	@ls $(DIST)/fer_pipeline-*.whl

.PHONY: search
SEARCH ?= default
search: venv  ## hyperparameter search over DVC experiments: make search SEARCH=fer2013 [SEARCH_ARGS="n_trials=20"]
	$(BIN)/python -m pipeline.search $(SEARCH) $(SEARCH_ARGS)

.PHONY: screenshots
screenshots: venv  ## the README's MLflow screenshots (docs/screenshots/*.png) from mlflow.db, in headless Chromium
	$(BIN)/python benchmarks/screenshots.py $(SCREENSHOTS_ARGS)
