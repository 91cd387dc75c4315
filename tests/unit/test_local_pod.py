"""The local node's pod logic that needs no cluster: environment, volumes,
termination messages (tests/ground/localpod.py), and the refusal of what the trainer's
pod does not use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.ground.localpod import (
    ContainerConfigError,
    Mount,
    References,
    Termination,
    UnsupportedPod,
    container_env,
    mount_operations,
    prepare_mounts,
    termination_message,
    wrap_with_mounts,
)


class FakeReferences(References):
    """References served from a dict instead of the API."""

    def __init__(self, objects: dict[tuple[str, str], dict[str, bytes]]):
        super().__init__(core=None, namespace="ns")  # type: ignore[arg-type]
        self.objects = objects

    def _read(self, kind: str, name: str) -> dict[str, bytes] | None:
        return self.objects.get((kind, name))


POD: dict[str, Any] = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "trainer"}},
    "spec": {"nodeName": "local-node", "serviceAccountName": "sa"},
}


def test_env_resolves_every_source_the_trainer_pod_uses_in_order() -> None:
    refs = FakeReferences(
        {
            ("Secret", "creds"): {"AWS_ACCESS_KEY_ID": b"id", "AWS_SECRET_ACCESS_KEY": b"key"},
            ("ConfigMap", "settings"): {"mode": b"fast", "MODE": b"from-configmap"},
        }
    )
    container = {
        "envFrom": [
            {"secretRef": {"name": "creds"}},
            {"configMapRef": {"name": "settings"}, "prefix": "CM_"},
            {"configMapRef": {"name": "absent", "optional": True}},
        ],
        "env": [
            {"name": "CM_MODE", "value": "overridden by env"},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
            {
                "name": "MISSING_OK",
                "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}},
            },
            {"name": "SPEC", "value": '{"uri": "s3://b/k"}'},
        ],
    }
    env = container_env(container, refs)
    assert env == {
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "key",
        "CM_mode": "fast",
        "CM_MODE": "overridden by env",
        "MODE": "fast",
        "SPEC": '{"uri": "s3://b/k"}',
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}],
            'secret "absent" not found',
        ),
        (
            [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope"}}}],
            "couldn't find key nope in Secret ns/creds",
        ),
    ],
)
def test_missing_references_wait_like_a_kubelet(env: list[dict[str, Any]], message: str) -> None:
    refs = FakeReferences({("Secret", "creds"): {"k": b"v"}})
    with pytest.raises(ContainerConfigError, match=message):
        container_env({"env": env}, refs)


@pytest.mark.parametrize(
    ("var", "message"),
    [
        ({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}, "fieldRef"),
        (
            {"name": "X", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            "resourceFieldRef",
        ),
        ({"name": "X", "value": "hello $(POD)"}, r"\$\(VAR\)"),
        ({"name": "X", "value": "costs $$5"}, r"\$\(VAR\)"),
    ],
)
def test_what_the_trainer_pod_does_not_use_fails_the_pod(var: dict[str, Any], message: str) -> None:
    with pytest.raises(UnsupportedPod, match=message):
        container_env({"env": [var]}, FakeReferences({}))


def test_volumes_are_materialised(tmp_path: Path) -> None:
    pod = {
        **POD,
        "spec": {
            **POD["spec"],
            "volumes": [
                {"name": "scratch", "emptyDir": {"sizeLimit": "2Gi"}},
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                {
                    "name": "s3-ca",
                    "configMap": {"name": "ca", "items": [{"key": "ca.crt", "path": "ca.pem"}]},
                },
            ],
        },
    }
    container = {
        "volumeMounts": [
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "s3-ca", "mountPath": "/etc/kubetune/s3-ca", "readOnly": True},
        ]
    }
    refs = FakeReferences({("ConfigMap", "ca"): {"ca.crt": b"PEM", "other": b"x"}})
    mounts = prepare_mounts(pod, container, refs, tmp_path)
    assert [(m.target, m.read_only) for m in mounts] == [
        ("/scratch", False),
        ("/dev/shm", False),
        ("/etc/kubetune/s3-ca", True),
    ]
    assert (tmp_path / "scratch").is_dir() and (tmp_path / "dshm").is_dir()
    assert [p.name for p in (tmp_path / "s3-ca").iterdir()] == ["ca.pem"]
    assert (tmp_path / "s3-ca" / "ca.pem").read_text() == "PEM"

    argv = wrap_with_mounts(["train"], mounts, ["unshare", "--mount", "--"], "/home", tmp_path)
    assert argv[:2] == ["unshare", "--mount"] and argv[-2:] == ["--", "train"]
    assert wrap_with_mounts(["train"], [], None, "/", tmp_path) == ["train"]


def test_mounts_go_outer_first_then_read_only(tmp_path: Path) -> None:
    pod_folder = tmp_path / "pods" / "ns" / "p" / "uid"
    volumes = pod_folder / "volumes"
    mounts = [
        Mount(volumes / "data", "/scratch/data", read_only=False),  # inside the next one
        Mount(volumes / "scratch", "/scratch", read_only=False),
        Mount(volumes / "ca", "/etc/kubetune/s3-ca", read_only=True),
    ]
    assert mount_operations(mounts, pod_folder, ["/opt/not-covered"]) == [
        *("bind", str(volumes / "scratch"), "/scratch"),
        *("bind", str(volumes / "data"), "/scratch/data"),
        *("bind", str(volumes / "ca"), "/etc/kubetune/s3-ca"),
        *("readonly", "/etc/kubetune/s3-ca"),
    ]


def test_a_volume_hiding_what_the_pod_runs_from_fails_the_pod(tmp_path: Path) -> None:
    pod_folder = tmp_path / "pods" / "ns" / "p" / "uid"
    over_pods = Mount(pod_folder / "volumes" / "tmp", str(tmp_path), read_only=False)
    with pytest.raises(UnsupportedPod, match="would hide"):
        mount_operations([over_pods], pod_folder, [])
    over_venv = Mount(pod_folder / "volumes" / "opt", "/opt", read_only=False)
    with pytest.raises(UnsupportedPod, match="would hide /opt/venv"):
        mount_operations([over_venv], pod_folder, ["/opt/venv"])


@pytest.mark.parametrize(
    ("volume", "mount", "message"),
    [
        ({"hostPath": {"path": "/"}}, {}, "hostPath"),
        ({"persistentVolumeClaim": {"claimName": "c"}}, {}, "persistentVolumeClaim"),
        ({"secret": {"secretName": "s"}}, {}, "secret"),
        ({"projected": {"sources": []}}, {}, "projected"),
        ({"emptyDir": {}}, {"subPath": "x"}, "subPath"),
    ],
)
def test_volumes_the_trainer_pod_does_not_use_fail_the_pod(
    tmp_path: Path, volume: dict[str, Any], mount: dict[str, Any], message: str
) -> None:
    pod = {**POD, "spec": {**POD["spec"], "volumes": [{"name": "v", **volume}]}}
    with pytest.raises(UnsupportedPod, match=message):
        prepare_mounts(
            pod,
            {"volumeMounts": [{"name": "v", "mountPath": "/v", **mount}]},
            FakeReferences({}),
            tmp_path,
        )


def test_termination_message_prefers_the_file_then_falls_back_to_logs(tmp_path: Path) -> None:
    message, log = tmp_path / "termination-log", tmp_path / "main.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    fallback = {"terminationMessagePolicy": "FallbackToLogsOnError"}

    assert termination_message(fallback, message, log, exit_code=1).splitlines() == [
        f"line {i}" for i in range(20, 100)
    ]
    assert termination_message(fallback, message, log, exit_code=0) == "", "no fallback on success"
    assert termination_message({}, message, log, exit_code=1) == "", (
        "no fallback without the policy"
    )

    message.write_text('{"reason":"BadData"}' + "x" * 5000)
    text = termination_message(fallback, message, log, exit_code=65)
    assert text.startswith('{"reason":"BadData"}') and len(text) == 4096


def test_termination_reports_signals() -> None:
    killed = Termination(137, "t0", "t1", "", pid=42).state["terminated"]
    assert (killed["exitCode"], killed["reason"], killed["signal"]) == (137, "Error", 9)
    done = Termination(0, "t0", "t1", "ok", pid=42).state["terminated"]
    assert (done["reason"], done["message"], "signal" in done) == ("Completed", "ok", False)
