# `make run` reproduces the pipeline, `make test` runs the test suite, `make ui` opens MLflow.
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export OPENBLAS_NUM_THREADS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
PORT ?= 5000

.PHONY: env run test test-fast lint ui bench clean

env:
	@scripts/env.sh

run: env
	dvc repro

test: env
	ruff check landscape stages tests benchmarks
	pytest

test-fast: env
	pytest -m "not slow"

lint: env
	ruff check landscape stages tests benchmarks

ui: env
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(PORT)

bench: env
	pip install --quiet --no-deps pyhessian==0.1 2>&1 | grep -v "is ignored" || true
	python -m benchmarks.curvature

clean:
	rm -rf data checkpoints plots reports dvc_plots
