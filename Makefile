# kubetune's commands for people and CI. `make help` lists them.
# Everything installs what it needs: uv (from PyPI) and the locked Python
# environment (.venv, from uv.lock); the Go-built test binaries are cached outside
# the clone (hack/build-tools.sh).

SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PYTEST_ARGS ?=

.PHONY: help deps tools test test-unit lint crds chart-docs kind-up kind-down

help: ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

deps: ## Install uv if missing and sync the locked environment (.venv)
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --all-extras

tools: ## Build (first time, minutes) or reuse the cached control-plane binaries and Go tools
	hack/build-tools.sh >/dev/null
	hack/go-tool.sh helm-docs >/dev/null
	hack/go-tool.sh kindconfig >/dev/null

test: deps tools ## Run every test tier: unit, integration, e2e
	$(UV) run --frozen pytest $(PYTEST_ARGS)

test-unit: deps ## Run the unit tier only (no servers; seconds)
	$(UV) run --frozen pytest -m unit $(PYTEST_ARGS)

lint: deps ## Lint the Python code
	$(UV) run --frozen ruff check .

crds: deps ## Regenerate crds/ from the spec model, and the Helm chart's copy of it
	$(UV) run --frozen kubetune crd --output-dir crds
	cp crds/tuningjobs.kubetune.dev.yaml charts/kubetune/files/crds/

chart-docs: ## Regenerate charts/kubetune/README.md from the documented values (helm-docs)
	cd charts/kubetune && "$$(../../hack/go-tool.sh helm-docs)" --chart-search-root . --template-files README.md.gotmpl --log-level warning

kind-up: ## Try kubetune in a local kind cluster, end to end (needs Docker; see docs/install.md)
	hack/kind-up.sh

kind-down: ## Delete the kind cluster that kind-up made
	kind delete cluster --name $${CLUSTER:-kubetune}
