"""The trainer image, built from Dockerfile.trainer, trains as the operator's pod runs it.

The pod spec is the one the operator's builders render for a TuningJob (the source of
truth for the user, the read-only root filesystem, the scratch and /dev/shm volumes,
HOME, the environment and the termination-message path), run with `docker run`
(tests/support/images.py): `kubetune train --from-env` fine-tunes a tiny Llama with QLoRA
on CPU, reading the model and the data from the real S3 server (SeaweedFS) and writing
its adapter there and its termination message to the file the kubelet would read.

The image has no CUDA base: the CUDA libraries that torch and bitsandbytes link against
come from the nvidia-* wheels in the environment. Without a GPU here, the test loads them
all (everything but the driver's libcuda, which the NVIDIA container toolkit mounts from
the host) and checks where they were found.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from kubetune.api.contract import TerminationMessage
from kubetune.api.v1alpha1 import TuningJob
from kubetune.operator import builders
from kubetune.operator.settings import Settings
from tests.ground.s3 import S3Endpoint
from tests.support.data import DOLLY
from tests.support.images import pod_to_docker_run, remove_container, run_in_image
from tests.support.tiny import save_tiny

# The first test here may build the trainer image from nothing (3 to 5 minutes on this
# loaded 2-core machine, longer on a slow network): 30 minutes instead of the default 15
# leave that room on top of the test itself.
pytestmark = pytest.mark.timeout(1800)

STEPS = 6

# Loaded inside the image: torch's CUDA build, then bitsandbytes' CUDA kernels, which need
# libcudart/libcublas by soname. Prints where each CUDA library was found.
CUDA_PROBE = """
import ctypes, json, pathlib, re
import torch, bitsandbytes
kernels = pathlib.Path(bitsandbytes.__file__).parent / f"libbitsandbytes_cuda{torch.version.cuda.replace('.', '')}.so"
ctypes.CDLL(str(kernels))
maps = pathlib.Path("/proc/self/maps").read_text().split()
cuda = re.compile(r"lib(cudart|cublas|cublasLt|cudnn|nccl|cusparse|cufft|nvrtc|cuda)\\.so")
found = sorted({p for p in maps if p.startswith("/") and cuda.search(p)})
print(json.dumps({"cuda": torch.version.cuda, "available": torch.cuda.is_available(),
                  "kernels": str(kernels), "libraries": found}))
"""


def test_trainer_image_loads_the_cuda_libraries_from_the_wheels(
    docker: str, trainer_image: str
) -> None:
    result = run_in_image(docker, trainer_image, "-c", CUDA_PROBE, entrypoint="python")
    assert result.returncode == 0, result.stderr[-4000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    libraries = probe["libraries"]
    names = {Path(p).name.split(".so")[0] for p in libraries}
    assert {"libcudart", "libcublas", "libcublasLt", "libcudnn", "libnccl"} <= names, libraries
    site = "/opt/venv/lib/python3.11/site-packages/"
    assert all(p.startswith(site) for p in libraries), (
        f"CUDA libraries loaded from outside the environment's wheels: {libraries}"
    )
    assert probe["kernels"].startswith(site + "bitsandbytes/")
    # No driver here, so no libcuda: on a GPU node the container toolkit mounts it.
    assert "libcuda" not in names and probe["available"] is False


def test_trainer_image_holds_exactly_the_installed_files(docker: str, trainer_image: str) -> None:
    # kubetune's files are copied into the image apart from its dependencies (one small
    # layer for a code change): every installed distribution's RECORD must be complete.
    # uv was mounted for the install only: it is not in the image.
    check = (
        "import importlib.metadata as m, pathlib\n"
        "missing = [str(f) for d in m.distributions() for f in (d.files or [])"
        " if not pathlib.Path(d.locate_file(f)).exists() and '__pycache__' not in str(f)]\n"
        "print(len(list(m.distributions())), missing[:20])\n"
        "assert not missing\n"
        "import kubetune.trainer.command, kubetune.operator.builders, shutil\n"
        "assert shutil.which('uv') is None, 'uv is in the image'\n"
        "print(m.version('kubetune'))"
    )
    result = run_in_image(docker, trainer_image, "-c", check, entrypoint="python")
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    who = run_in_image(
        docker, trainer_image, "-c", "id -u; id -g; pwd; echo $HOME", entrypoint="sh"
    )
    assert who.stdout.split() == ["1000", "1000", "/scratch", "/scratch/home"], who


def test_trainer_image_trains_as_the_operators_pod_with_s3(
    docker: str,
    trainer_image: str,
    s3_server: S3Endpoint,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    # Inputs in S3, as a user would put them: a tiny model built here, a Dolly subset.
    model = save_tiny(tmp_path / "tiny-llama")
    s3 = s3_server.client()
    for path in sorted(p for p in model.rglob("*") if p.is_file()):
        s3.upload_file(str(path), s3_bucket, f"models/tiny/{path.relative_to(model)}")
    subset = "".join(DOLLY.read_text().splitlines(keepends=True)[:80])
    s3.put_object(Bucket=s3_bucket, Key="data/dolly.jsonl", Body=subset.encode())

    tuningjob = TuningJob.model_validate(
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "TuningJob",
            "metadata": {"name": "image-tiny", "namespace": "images"},
            "spec": {
                "model": {"source": f"s3://{s3_bucket}/models/tiny/"},
                "dataset": {"source": f"s3://{s3_bucket}/data/dolly.jsonl", "format": "dolly"},
                "method": {"type": "qlora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
                "training": {
                    "maxSteps": STEPS,
                    "batchSize": 2,
                    "maxSeqLength": 128,
                    "checkpointEvery": STEPS,
                    "logEvery": 1,
                },
                "output": {"destination": f"s3://{s3_bucket}/out/"},
                "s3": {**s3_server.spec(), "credentialsSecret": "s3-credentials"},
                "resources": {"gpus": 0, "cpu": "1", "memory": "4Gi", "shmSize": "256Mi"},
            },
        }
    )
    job = builders.build_job(tuningjob, Settings(trainer_image=trainer_image))
    pod = job["spec"]["template"]["spec"]
    credentials = s3_server.env()
    name = f"kubetune-test-trainer-{secrets.token_hex(4)}"
    run = pod_to_docker_run(
        docker,
        pod,
        image=pod["containers"][0]["image"],
        name=name,
        folder=tmp_path / "pod",
        secret_values={"s3-credentials": credentials},
        # The one addition to the pod's environment, the test machine's setting that the
        # ground's local node passes on too (tests/support/training_fixtures.py): on this
        # loaded 2-core machine, torch's OpenMP threads spinning against each other made
        # each step of this run take 30 s instead of about 1 s.
        extra_env={"OMP_NUM_THREADS": "1"},
    )
    # The pod as rendered: what this run reproduces.
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "--read-only" in run.argv and "--user" in run.argv
    assert run.argv[run.argv.index("--user") + 1] == "1000:1000"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/scratch", "/dev/shm"}
    # Credentials reach the container through the client's environment, never its arguments.
    assert not any(credentials["AWS_SECRET_ACCESS_KEY"] in a for a in run.argv)

    try:
        result = subprocess.run(
            run.argv,
            env={**os.environ, **run.env},
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
    finally:
        remove_container(docker, name)
    log = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"the trainer exited {result.returncode}:\n{log}"

    message = TerminationMessage.from_json(run.termination_log.read_text())
    assert message is not None, f"no termination message; log:\n{log}"
    assert message.adapter and message.adapter.startswith(f"s3://{s3_bucket}/out/adapter"), message
    assert message.metrics, message
    keys = [
        o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="out/adapter")["Contents"]
    ]
    assert any(k.endswith("adapter_config.json") for k in keys), keys
    assert any(k.endswith(".safetensors") for k in keys), keys
    # The root filesystem is read-only: what it wrote locally (the model it downloaded,
    # its checkpoints) went to the scratch volume.
    written = [p.relative_to(run.volumes["scratch"]) for p in run.volumes["scratch"].rglob("*")]
    assert written, f"nothing in the scratch volume; log:\n{log}"
