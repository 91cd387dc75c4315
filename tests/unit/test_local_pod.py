"""The local node's pod logic that needs no cluster: environment, volumes,
termination messages (tests/ground/localpod.py)."""

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
    expand,
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


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$$(A) costs $$5", env) == "$(A) costs $5"
    assert expand("$(UNDEFINED) stays", env) == "$(UNDEFINED) stays"


def test_env_resolves_every_source_in_order() -> None:
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
        ],
        "env": [
            {"name": "CM_MODE", "value": "overridden by env"},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
            {
                "name": "MISSING_OK",
                "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}},
            },
            {"name": "GREETING", "value": "$(APP) on $(NODE)"},
        ],
    }
    env = container_env(POD, container, refs, allocatable={})
    assert env == {
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "key",
        "CM_mode": "fast",
        "CM_MODE": "overridden by env",
        "APP": "trainer",
        "NODE": "local-node",
        "MODE": "fast",
        "GREETING": "trainer on local-node",
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
        container_env(POD, {"env": env}, refs, allocatable={})


def test_resource_field_refs_divide_and_round_up() -> None:
    container = {
        "resources": {"limits": {"memory": "1Gi", "cpu": "500m"}},
        "env": [
            {
                "name": "MEM_MI",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            # No limit: the node's allocatable, as on a kubelet.
            {
                "name": "DISK_GI",
                "valueFrom": {
                    "resourceFieldRef": {"resource": "limits.ephemeral-storage", "divisor": "1Gi"}
                },
            },
        ],
    }
    env = container_env(
        POD, container, FakeReferences({}), allocatable={"ephemeral-storage": "100Gi"}
    )
    assert (env["MEM_MI"], env["CPUS"], env["DISK_GI"]) == ("1024", "1", "100")


def test_unknown_field_ref_fails_the_pod() -> None:
    container = {"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.priority"}}}]}
    with pytest.raises(UnsupportedPod, match=r"spec\.priority"):
        container_env(POD, container, FakeReferences({}), allocatable={})


def test_volumes_are_materialised(tmp_path: Path) -> None:
    pod = {
        **POD,
        "spec": {
            **POD["spec"],
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {
                    "name": "config",
                    "configMap": {
                        "name": "settings",
                        "items": [{"key": "mode", "path": "conf/mode.txt"}],
                    },
                },
                {"name": "kube-api-access-abcde", "projected": {"sources": []}},
            ],
        },
    }
    container = {
        "volumeMounts": [
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "config", "mountPath": "/etc/app", "readOnly": True},
            {
                "name": "kube-api-access-abcde",
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            },
        ]
    }
    refs = FakeReferences({("ConfigMap", "settings"): {"mode": b"fast"}})
    mounts = prepare_mounts(pod, container, refs, tmp_path)
    assert [(m.target, m.read_only) for m in mounts] == [("/scratch", False), ("/etc/app", True)]
    assert (tmp_path / "scratch").is_dir()
    assert (tmp_path / "config" / "conf" / "mode.txt").read_text() == "fast"

    argv = wrap_with_mounts(["train"], mounts, ["unshare", "--mount", "--"], "/scratch", tmp_path)
    assert argv[:2] == ["unshare", "--mount"] and argv[-2:] == ["--", "train"]
    assert wrap_with_mounts(["train"], [], None, "/", tmp_path) == ["train"]


def test_mounts_bind_from_the_pod_folder_and_keep_hidden_folders_in_sight(tmp_path: Path) -> None:
    pod_folder = tmp_path / "pods" / "ns" / "p" / "uid"
    (pod_folder / "volumes" / "tmp").mkdir(parents=True)
    (pod_folder / "volumes" / "data").mkdir()
    (pod_folder / "volumes" / "config").mkdir()
    mounts = [
        Mount(pod_folder / "volumes" / "data", "/tmp/data", read_only=False),  # inside the next one
        Mount(pod_folder / "volumes" / "tmp", "/tmp", read_only=False),
        Mount(pod_folder / "volumes" / "config", "/etc/app", read_only=True),
    ]
    venv, elsewhere = str(tmp_path / "venv"), "/opt/not-covered"
    ops = mount_operations(mounts, pod_folder, [venv, elsewhere])
    # A handle on the hidden venv while it is in sight; then outer targets first, each made
    # inside what is mounted by then; sources relative to the pod folder, the script's
    # working folder, so that mounting over an ancestor of it cannot hide them.
    assert ops == [
        "mkdir",
        ".keep/0",
        "bind",
        venv,
        ".keep/0",
        "mkdir",
        "/tmp",
        "bind",
        "volumes/tmp",
        "/tmp",
        "mkdir",
        "/tmp/data",
        "bind",
        "volumes/data",
        "/tmp/data",
        "mkdir",
        "/etc/app",
        "bind",
        "volumes/config",
        "/etc/app",
        "mkdir",
        venv,
        "bind",
        ".keep/0",
        venv,
        "mkdir",
        str(pod_folder),
        "bind",
        ".",
        str(pod_folder),
        "readonly",
        "/etc/app",
    ]
    # Nothing covered: only the volumes.
    assert mount_operations(mounts[2:], pod_folder, [venv]) == [
        "mkdir",
        "/etc/app",
        "bind",
        "volumes/config",
        "/etc/app",
        "readonly",
        "/etc/app",
    ]


def test_unsupported_volumes_fail_the_pod(tmp_path: Path) -> None:
    pod = {**POD, "spec": {**POD["spec"], "volumes": [{"name": "host", "hostPath": {"path": "/"}}]}}
    with pytest.raises(UnsupportedPod, match="hostPath"):
        prepare_mounts(
            pod,
            {"volumeMounts": [{"name": "host", "mountPath": "/host"}]},
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
