# kubetune's commands for people and CI. `make help` lists them.
# Everything installs what it needs: uv (from PyPI) and the locked Python
# environment (.venv, from uv.lock); the Go-built test binaries are cached outside
# the clone (hack/build-tools.sh).

SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PYTEST_ARGS ?=

.PHONY: help demo deps tools test test-unit test-integration test-e2e lint cluster cluster-down cluster-status bench-data bench-trainer

help: ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

demo: deps ## Train a tiny model end to end through S3 on this machine (a few minutes, no GPU)
	$(UV) run --frozen python hack/demo.py

deps: ## Install uv if missing and sync the locked environment (.venv)
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --all-extras

# With KUBETUNE_TEST_KUBECONFIG set, the tests run against that cluster: the
# control-plane binaries are not needed, and kubectl, helm and kwok may come from PATH.
tools: ## Build (first time, minutes) or reuse the cached control-plane binaries
	@if [ -n "$$KUBETUNE_TEST_KUBECONFIG" ] && ! hack/build-tools.sh --check >/dev/null 2>&1; then \
	  echo "KUBETUNE_TEST_KUBECONFIG is set: not building the control plane; kubectl, helm and kwok come from PATH"; \
	else \
	  hack/build-tools.sh >/dev/null; \
	fi

test: deps tools ## Run every test tier: unit, integration, e2e
	$(UV) run --frozen pytest $(PYTEST_ARGS)

test-unit: deps ## Run the unit tier only (no servers; seconds)
	$(UV) run --frozen pytest -m unit $(PYTEST_ARGS)

test-integration: deps tools ## Run the integration tier (real control plane and S3)
	$(UV) run --frozen pytest -m integration $(PYTEST_ARGS)

test-e2e: deps tools ## Run the e2e tier (TuningJobs through the operator and the local node)
	$(UV) run --frozen pytest -m e2e $(PYTEST_ARGS)

cluster: deps tools ## Start the test ground and leave it running (control plane, GPU nodes, local node, S3)
	$(UV) run --frozen python -m tests.ground up

cluster-status: ## Say whether the `make cluster` ground runs, and how to use it
	$(UV) run --frozen python -m tests.ground status

cluster-down: ## Stop everything `make cluster` started
	$(UV) run --frozen python -m tests.ground down

lint: deps ## Lint the Python code
	$(UV) run --frozen ruff check .

bench-data: deps ## Benchmark the data pipeline against TRL (figures for docs/benchmarks.md)
	$(UV) run --frozen python bench/data_pipeline.py --repeat 3

bench-trainer: deps ## Trainer figures on CPU: base precision, loop vs transformers Trainer, 4-bit generation
	$(UV) run --frozen python bench/trainer_cpu.py
