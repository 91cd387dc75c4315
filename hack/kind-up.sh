#!/usr/bin/env bash
# The kind walkthrough: a local cluster running kubetune end to end (needs Docker).
#
#   make kind-up        # or: hack/kind-up.sh
#   make kind-down      # delete the cluster
#
# 1. creates the kind cluster from kind-config.yaml (reused if it exists);
# 2. builds the operator and trainer images and loads them into the nodes;
# 3. runs SeaweedFS as the cluster's S3 (namespace storage) with random keys;
# 4. installs the chart (namespace kubetune-system) with that S3 as the default;
# 5. creates namespace tuning (restricted Pod Security) with the S3 credentials Secret;
# 6. uploads the dataset (DATASET, default: the Dolly sample beside the checkout, or
#    databricks-dolly-15k from the Hugging Face hub) through a port-forward;
# 7. applies hack/kind/tuningjob.yaml and watches it.
#
# Needs: docker, kind (>= v0.24), kubectl, helm (v3.14+ or v4), uv. Environment:
#   CLUSTER (kubetune), DATASET (a local .jsonl), SKIP_BUILD=1 (images already loaded),
#   WATCH=0 (do not watch at the end).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cluster="${CLUSTER:-kubetune}"
tag="dev"
operator_image="kubetune-operator:$tag"
trainer_image="kubetune-trainer:$tag"
context="kind-$cluster"
kc() { kubectl --context "$context" "$@"; }
say() { printf '\n==> %s\n' "$*" >&2; }

for tool in docker kind kubectl helm uv; do
  command -v "$tool" >/dev/null || { echo "kind-up: $tool is not on PATH (see docs/install.md, 'Try it in kind')" >&2; exit 1; }
done

say "1/7 kind cluster $cluster"
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  echo "reusing the existing cluster $cluster" >&2
else
  kind create cluster --name "$cluster" --config kind-config.yaml --wait 120s
fi

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  say "2/7 images (the trainer's CUDA base is large: the first build takes a while)"
  docker build -f Dockerfile.operator -t "$operator_image" .
  docker build -f Dockerfile.trainer -t "$trainer_image" .
  kind load docker-image --name "$cluster" "$operator_image" "$trainer_image"
fi

say "3/7 SeaweedFS (S3) in namespace storage"
kc create namespace storage --dry-run=client -o yaml | kc apply -f -
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
kc apply -f hack/kind/seaweedfs.yaml
kc -n storage rollout status deployment/seaweedfs --timeout=180s

say "4/7 the kubetune chart"
helm --kube-context "$context" upgrade --install kubetune charts/kubetune \
  --namespace kubetune-system --create-namespace \
  --set image.repository=kubetune-operator --set image.tag="$tag" --set image.pullPolicy=Never \
  --set operator.trainer.image.repository=kubetune-trainer --set operator.trainer.image.tag="$tag" \
  --set operator.trainer.image.pullPolicy=Never \
  --set operator.s3.endpoint=http://seaweedfs.storage:8333 \
  --set operator.s3.credentialsSecret=s3-credentials \
  --wait --timeout 5m

say "5/7 namespace tuning with the S3 credentials"
kc create namespace tuning --dry-run=client -o yaml | kc apply -f -
kc label namespace tuning --overwrite pod-security.kubernetes.io/enforce=restricted >/dev/null
s3_secret tuning | kc apply -f - >/dev/null

say "6/7 the dataset"
dataset="${DATASET:-}"
if [[ -z "$dataset" && -f "$root/../shared/data/dolly-sample.jsonl" ]]; then
  dataset="$root/../shared/data/dolly-sample.jsonl"
fi
if [[ -z "$dataset" ]]; then
  dataset="$(mktemp -d)/dolly.jsonl"
  curl -fsSL -o "$dataset" https://huggingface.co/datasets/databricks/databricks-dolly-15k/resolve/main/databricks-dolly-15k.jsonl
fi
port=18333
kc -n storage port-forward service/seaweedfs "$port:8333" >/dev/null 2>&1 &
forward=$!
trap 'kill "$forward" 2>/dev/null || true' EXIT
sleep 2
AWS_ACCESS_KEY_ID="$access_key" AWS_SECRET_ACCESS_KEY="$secret_key" \
  uv run --frozen --extra trainer python - "$dataset" "http://127.0.0.1:$port" <<'PY'
import sys
import boto3
from botocore.exceptions import ClientError

path, endpoint = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
try:
    s3.create_bucket(Bucket="kubetune")
except ClientError as e:
    if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
        raise
s3.upload_file(path, "kubetune", "datasets/dolly-sample.jsonl")
print(f"uploaded {path} to s3://kubetune/datasets/dolly-sample.jsonl", file=sys.stderr)
PY

say "7/7 the TuningJob"
kc -n tuning apply -f hack/kind/tuningjob.yaml
cat >&2 <<MSG
TuningJob tuning/smollm-dolly is applied. Follow it with:
  kubectl --context $context -n tuning get tuningjobs -w
  kubectl --context $context -n tuning describe tuningjob smollm-dolly
  kubectl --context $context -n tuning logs -f job/smollm-dolly
MSG
if [[ "${WATCH:-1}" == 1 ]]; then
  kc -n tuning get tuningjobs -w
fi
