# kubetune's commands for people and CI. `make help` lists them.
# Everything installs what it needs: uv (from PyPI) and the locked Python
# environment (.venv, from uv.lock); the Go-built test binaries are cached outside
# the clone (hack/build-tools.sh).

SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PYTEST_ARGS ?=

.PHONY: help deps tools test test-unit lint

help: ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

deps: ## Install uv if missing and sync the locked environment (.venv)
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --all-extras

tools: ## Build (first time, minutes) or reuse the cached control-plane binaries
	hack/build-tools.sh >/dev/null

test: deps tools ## Run every test tier: unit, integration, e2e
	$(UV) run --frozen pytest $(PYTEST_ARGS)

test-unit: deps ## Run the unit tier only (no servers; seconds)
	$(UV) run --frozen pytest -m unit $(PYTEST_ARGS)

lint: deps ## Lint the Python code
	$(UV) run --frozen ruff check .

.PHONY: crds bench-operator demo-cluster

crds: deps ## Regenerate crds/ from the TuningJob models (a unit test fails while it is stale)
	$(UV) run --frozen kubetune crd --output-dir crds

bench-operator: deps tools ## Operator benchmark: created → Job latency, CPU and memory at 1, 50, 500 TuningJobs
	$(UV) run --frozen python -m bench.operator_latency --json out/operator-latency.json

demo-cluster: cluster ## The whole path on the test ground: CRD, operator, S3 Secret, a TuningJob trained on the local node
	$(UV) run --frozen python -m hack.demo_cluster
