"""`make demo-cluster`: the whole kubetune path on the local test ground, for a newcomer.

After `make cluster` (control plane, kwok GPU nodes, the local node, SeaweedFS), this
installs the CRD, puts a tiny model and a Dolly subset in S3 and the S3 keys in a
Secret, starts `kubetune operator`, applies a TuningJob that trains on the local node,
and shows `kubectl get tuningjobs -w` until it ends, then where the adapter is.

Everything stays up for exploring (`kubectl get tj -n kubetune-demo -o yaml`,
`kubectl describe tj ...`, the operator's log under .kubetune/cluster/). `make
cluster-down` stops the ground; the operator then exits by itself once it can no
longer renew its Lease (within LEASE_RENEW_DEADLINE_SECONDS).

The model is a tiny Llama with random weights, built here (no model hub is reached),
so the adapter learns little: the point is the path, not the model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".kubetune" / "cluster"
NAMESPACE = "kubetune-demo"
BUCKET = "kubetune-demo"
NAME = "dolly-tiny"
DOLLY_RECORDS = 200


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> int:
    state_file = STATE / "state.json"
    if not state_file.exists():
        print(
            f"no test ground in {STATE}: run `make cluster` first (make demo-cluster does)",
            file=sys.stderr,
        )
        return 1
    state = json.loads(state_file.read_text())
    if not state.get("s3"):
        print(
            "the test ground has no S3 server; run `make cluster-down && make cluster`",
            file=sys.stderr,
        )
        return 1
    env = {
        **os.environ,
        "KUBECONFIG": state["kubeconfig"],
        "PATH": os.pathsep.join([*state["path"], os.environ["PATH"]]),
    }

    def kubectl(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", *args], env=env, check=True, text=True, **kwargs)

    step("installing the TuningJob CRD (crds/)")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/tuningjobs.kubetune.dev")

    step(f"namespace {NAMESPACE}, enforcing the restricted Pod Security Standard")
    manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(manifest))

    s3 = state["s3"]
    step(f"S3 ({s3['url']}): a tiny Llama and {DOLLY_RECORDS} Dolly records in bucket {BUCKET}")
    upload_inputs(s3)

    step("the S3 keys in Secret s3-credentials (the trainer gets them only as Secret references)")
    with tempfile.NamedTemporaryFile(
        "w", suffix=".env"
    ) as keys:  # keys never appear in a command line
        os.chmod(keys.name, 0o600)
        keys.write(
            f"AWS_ACCESS_KEY_ID={s3['env']['AWS_ACCESS_KEY_ID']}\nAWS_SECRET_ACCESS_KEY={s3['env']['AWS_SECRET_ACCESS_KEY']}\n"
        )
        keys.flush()
        secret = kubectl(
            "create",
            "secret",
            "generic",
            "s3-credentials",
            "-n",
            NAMESPACE,
            f"--from-env-file={keys.name}",
            "--dry-run=client",
            "-o",
            "yaml",
            capture_output=True,
        ).stdout
    kubectl("apply", "-f", "-", input=secret)

    step("starting `kubetune operator` (log: .kubetune/cluster/operator.log)")
    start_operator(env, s3["url"])

    step(f"applying TuningJob {NAME}: QLoRA on the local node, then `kubectl get tuningjobs -w`")
    tuningjob = demo_tuningjob(s3)
    path = STATE / "demo-tuningjob.yaml"
    path.write_text(yaml.safe_dump(tuningjob, sort_keys=False))
    print(f"(the manifest: {path})")
    kubectl("delete", "tuningjob", NAME, "-n", NAMESPACE, "--ignore-not-found", "--wait=true")
    kubectl("apply", "-n", NAMESPACE, "-f", str(path))
    watch = subprocess.Popen(["kubectl", "get", "tuningjobs", "-n", NAMESPACE, "-w"], env=env)
    status: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            body = json.loads(
                kubectl(
                    "get", "tuningjob", NAME, "-n", NAMESPACE, "-o", "json", capture_output=True
                ).stdout
            )
            status = body.get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            time.sleep(2)
    finally:
        time.sleep(1)
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=10)

    print()
    if status.get("phase") != "Succeeded":
        print(
            f"TuningJob {NAME} is {status.get('phase')}: {status.get('reason')}: {status.get('message')}"
        )
        print(f"more: kubectl describe tuningjob {NAME} -n {NAMESPACE}")
        return 1
    print(f"Succeeded. The adapter is at {status['output']['adapter']}")
    print(
        f"Explore: kubectl get tj -n {NAMESPACE} -o wide; kubectl describe tj {NAME} -n {NAMESPACE}"
    )
    print("Stop everything: make cluster-down")
    return 0


def upload_inputs(s3: dict[str, Any]) -> None:
    import boto3
    from botocore.config import Config

    from tests.support.data import DOLLY

    # A tiny random Llama and its tokenizer, built here; the Dolly sample of the tests.
    from tests.support.tiny import save_tiny

    client = boto3.client(
        "s3",
        endpoint_url=s3["url"],
        region_name=s3["region"],
        aws_access_key_id=s3["env"]["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3["env"]["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    )
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if BUCKET not in existing:
        client.create_bucket(Bucket=BUCKET)
    with tempfile.TemporaryDirectory() as tmp:
        model = save_tiny(Path(tmp) / "model")
        for file in sorted(p for p in model.rglob("*") if p.is_file()):
            client.upload_file(str(file), BUCKET, f"models/tiny-llama/{file.relative_to(model)}")
    records = "".join(DOLLY.read_text().splitlines(keepends=True)[:DOLLY_RECORDS])
    client.put_object(Bucket=BUCKET, Key="datasets/dolly-sample.jsonl", Body=records.encode())


def start_operator(env: dict[str, str], s3_url: str) -> None:
    pid_file = STATE / "operator.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        try:
            os.kill(pid, 0)
            print(f"the operator of an earlier demo runs (pid {pid}); using it")
            return
        except OSError:
            pass
    settings = {
        "NAMESPACES": NAMESPACE,
        "LEASE_NAMESPACE": NAMESPACE,
        "PROGRESS_INTERVAL_SECONDS": "2",
        "S3_ENDPOINT": s3_url,
        "TRAINER_IMAGE": "kubetune/trainer:demo",  # the local node runs the command, not an image
        "METRICS_PORT": "0",
        "HEALTH_PORT": "0",
        # The Validating step's pod, sized for the local node.
        "VALIDATE_CPU": "1",
        "VALIDATE_MEMORY": "2Gi",
        "VALIDATE_SCRATCH_SIZE": "1Gi",
    }
    operator_env = {
        **env,
        **{f"KUBETUNE_OPERATOR_{k}": v for k, v in settings.items()},
        "POD_NAME": "demo-operator",
    }
    log = (STATE / "operator.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "kubetune", "operator"],
        env=operator_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=ROOT,
    )
    pid_file.write_text(str(process.pid))
    time.sleep(3)
    if process.poll() is not None:
        raise SystemExit(
            f"the operator exited ({process.returncode}); see {STATE / 'operator.log'}"
        )


def demo_tuningjob(s3: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "TuningJob",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "model": {"source": f"s3://{BUCKET}/models/tiny-llama/"},
            "dataset": {
                "source": f"s3://{BUCKET}/datasets/dolly-sample.jsonl",
                "format": "dolly",
                "validation": {"fraction": 0.1},
            },
            "method": {"type": "qlora", "lora": {"r": 8, "alpha": 16}},
            "training": {
                "maxSteps": 30,
                "learningRate": 5e-3,
                "batchSize": 2,
                "gradientAccumulation": 1,
                "maxSeqLength": 256,
                "warmupRatio": 0.0,
                "evalEvery": 10,
                "checkpointEvery": 10,
                "logEvery": 1,
            },
            "output": {"destination": f"s3://{BUCKET}/adapters/{NAME}/"},
            "s3": {
                "region": s3["region"],
                "addressingStyle": "path",
                "credentialsSecret": "s3-credentials",
            },
            "resources": {
                "gpus": 0,
                "cpu": "1",
                "memory": "4Gi",
                "ephemeralStorage": "2Gi",
                "scratchSize": "2Gi",
                "shmSize": "256Mi",
            },
            "scheduling": {
                "nodeSelector": {"kubetune.dev/local-node": "true"},
                "tolerations": [
                    {"key": "kubetune.dev/local-node", "operator": "Exists", "effect": "NoSchedule"}
                ],
            },
            "runtime": {"backoffLimit": 1},
        },
    }


if __name__ == "__main__":
    sys.exit(main())
