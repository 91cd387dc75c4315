# kubetune's commands for people and CI. `make help` lists them.
# Everything installs what it needs: uv (from PyPI) and the locked Python
# environment (.venv, from uv.lock); the Go-built test binaries are cached outside
# the clone (hack/build-tools.sh).

SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PYTEST_ARGS ?=

.PHONY: help demo deps tools test test-unit test-integration test-e2e test-faults lint cluster cluster-down cluster-status \
	bench bench-smoke bench-data bench-s3 bench-train bench-first-step bench-operator bench-trainer \
	crds chart-docs demo-cluster kind-up kind-down test-kind kind-node-image images

help: ## List the commands
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

demo: deps ## Train a tiny model end to end through S3 on this machine (a few minutes, no GPU)
	$(UV) run --frozen python -m hack.demo

deps: ## Install uv if missing and sync the locked environment (.venv)
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || \
	  python3 -m pip install --quiet uv || python3 -m pip install --quiet --user uv || \
	  python3 -m pip install --quiet --user --break-system-packages uv
	$(UV) sync --frozen --all-extras

# With KUBETUNE_TEST_KUBECONFIG set, the tests run against that cluster: the
# control-plane binaries are not needed, and kubectl, helm and kwok may come from PATH.
# The Go tools of the unit tier's external checks (helm-docs, kindconfig, kubeconform,
# promtool) and kubeconform's schemas are prepared either way.
tools: ## Build (first time, minutes) or reuse the cached control-plane binaries and Go tools
	@if [ -n "$$KUBETUNE_TEST_KUBECONFIG" ] && ! hack/build-tools.sh --check >/dev/null 2>&1; then \
	  echo "KUBETUNE_TEST_KUBECONFIG is set: not building the control plane; kubectl, helm and kwok come from PATH"; \
	else \
	  hack/build-tools.sh >/dev/null; \
	fi
	hack/go-tool.sh helm-docs >/dev/null
	hack/go-tool.sh kindconfig >/dev/null
	hack/go-tool.sh kubeconform >/dev/null
	hack/go-tool.sh promtool >/dev/null
	hack/k8s-schemas.sh >/dev/null

# Every tier, in order (tests/conftest.py): unit, integration, e2e, faults, and last kind
# (the built images, then a kind cluster built offline with TuningJobs in real pods; about
# 18 minutes of the whole here). KIND=0 skips what needs a Docker engine, saying so; never
# in CI.
test: deps lint tools ## Lint, then run every test tier: unit, integration, e2e, faults, kind (KIND=0: without Docker)
	$(UV) run --frozen pytest $(PYTEST_ARGS)

test-unit: deps ## Run the unit tier only (no servers; seconds)
	$(UV) run --frozen pytest -m unit $(PYTEST_ARGS)

test-integration: deps tools ## Run the integration tier (real control plane and S3)
	$(UV) run --frozen pytest -m integration $(PYTEST_ARGS)

test-faults: deps tools ## Run the fault-injection tier (S3 faults, signals, oversized input; docs/reliability.md)
	$(UV) run --frozen pytest -m faults $(PYTEST_ARGS)

test-e2e: deps tools ## Run the e2e tier (TuningJobs through the operator and the local node)
	$(UV) run --frozen pytest -m e2e $(PYTEST_ARGS)

# The kind tier needs a Docker engine: hack/docker-engine.sh uses the running one, or
# installs (root on Debian/Ubuntu) and starts one, which the tier stops afterwards; where
# it can do neither it fails and says what to install. It deletes its cluster at the end.
test-kind: deps tools ## Run the kind tier: a kind cluster built offline, the real images, TuningJobs in real pods
	$(UV) run --frozen pytest -m kind $(PYTEST_ARGS)

kind-node-image: ## Build the kind node image offline (cached by version and recipe); print its tag
	@hack/kind/build-node-image.sh

cluster: deps tools ## Start the test ground and leave it running (control plane, GPU nodes, local node, S3)
	$(UV) run --frozen python -m tests.ground up

cluster-status: ## Say whether the `make cluster` ground runs, and how to use it
	$(UV) run --frozen python -m tests.ground status

cluster-down: ## Stop everything `make cluster` started
	$(UV) run --frozen python -m tests.ground down

lint: deps ## The house's checks: ruff format, ruff check, mypy, import-linter contracts (seconds)
	$(UV) run --frozen hack/lint.sh

# Benchmarks (bench/, results in docs/benchmarks.md): each prints a table and writes
# JSON (bench/results/, the operator's to out/). They take minutes and load the
# machine: run one at a time.
bench: bench-data bench-s3 bench-train bench-first-step bench-trainer bench-operator ## Run every benchmark (tens of minutes)

bench-smoke: deps tools ## Run every benchmark in its smoke mode (small inputs, one round: checks they work, no figures)
	$(UV) run --frozen python -m bench.data_pipeline --smoke
	$(UV) run --frozen python -m bench.s3_transfer --smoke
	$(UV) run --frozen python -m bench.train_step --smoke
	$(UV) run --frozen python -m bench.first_step --smoke
	$(UV) run --frozen python -m bench.trainer_cpu --quick
	$(UV) run --frozen python -m bench.operator_latency --scales 1 --idle 1 --json out/operator-latency-smoke.json

bench-data: deps ## Benchmark the data pipeline against TRL (figures for docs/benchmarks.md)
	$(UV) run --frozen python -m bench.data_pipeline --repeat 3

bench-s3: deps ## Benchmark S3 transfers: kubetune's storage layer against boto3 configurations
	$(UV) run --frozen python -m bench.s3_transfer

bench-train: deps ## Benchmark a QLoRA training step: kubetune, TRL, HF Trainer (tiny Llama on CPU; SCALE=1b|8b on a GPU)
	$(UV) run --frozen python -m bench.train_step --scale $(or $(SCALE),tiny)

bench-first-step: deps ## Benchmark the time to the first optimizer step, by phase, cold and warm (SCALE=1b|8b on a GPU)
	$(UV) run --frozen python -m bench.first_step --scale $(or $(SCALE),tiny)

bench-operator: deps tools ## Operator benchmark: created → Job latency, CPU and memory at 1, 50, 500 TuningJobs
	$(UV) run --frozen python -m bench.operator_latency --json out/operator-latency.json

demo-cluster: cluster ## The whole path on the test ground: CRD, operator, S3 Secret, a TuningJob trained on the local node
	$(UV) run --frozen python -m hack.demo_cluster

crds: deps ## Regenerate crds/ from the spec model, and the Helm chart's copy of it
	$(UV) run --frozen kubetune crd --output-dir crds
	cp crds/tuningjobs.kubetune.dev.yaml charts/kubetune/files/crds/

chart-docs: ## Regenerate charts/kubetune/README.md from the documented values (helm-docs)
	cd charts/kubetune && "$$(../../hack/go-tool.sh helm-docs)" --chart-search-root . --template-files README.md.gotmpl --log-level warning

# Without an image registry: the bases are made here (hack/images/build-bases.sh, Debian
# and PyPI only); IMAGE_BASES=registry builds on the Dockerfiles' usual bases instead.
images: ## Build kubetune-operator:dev and kubetune-trainer:dev with BuildKit (IMAGE_BASES=local|registry, TAG=dev)
	hack/images/build.sh

kind-up: deps ## Try kubetune in a local kind cluster, end to end (needs Docker; see docs/install.md)
	hack/kind-up.sh

kind-down: ## Delete the kind cluster that kind-up made
	"$$(command -v kind || hack/build-tools.sh --kind | sed -n 's/^kind=//p')" delete cluster --name $${CLUSTER:-kubetune}

bench-trainer: deps ## Trainer figures on CPU: base precision, loop vs transformers Trainer, 4-bit generation
	$(UV) run --frozen python -m bench.trainer_cpu
