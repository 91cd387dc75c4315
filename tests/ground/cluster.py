"""The cluster as tests see it: a kubeconfig, API clients, kubectl and helm, namespaces
and identities. The same handle serves the built-in control plane and an existing
cluster (KUBETUNE_TEST_KUBECONFIG), so tests never care which one runs.
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from kubernetes.client import (
    ApiClient,
    ApiextensionsV1Api,
    AppsV1Api,
    BatchV1Api,
    CoordinationV1Api,
    CoreV1Api,
    CustomObjectsApi,
    RbacAuthorizationV1Api,
)
from kubernetes.client.exceptions import ApiException
from kubernetes.config import new_client_from_config

from tests.ground.kubeconfig import read_server, write_kubeconfig
from tests.ground.pki import CertificateAuthority
from tests.ground.tools import Tools

T = TypeVar("T")

RESTRICTED_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
# Every namespace the ground creates carries this, so a leftover is easy to find.
NAMESPACE_LABEL = "kubetune.dev/test-namespace"


def wait_for(
    check: Callable[[], T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll `check` until it returns something truthy and return that; AssertionError
    (a test failure, with the last exception if any) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
        except AssertionError as e:
            last_error = e
        except ApiException as e:
            last_error = e
        else:
            if result:
                return result
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


class Cluster:
    """A Kubernetes cluster the tests talk to (as a cluster-admin)."""

    def __init__(
        self,
        kubeconfig: Path,
        tools: Tools,
        workdir: Path,
        *,
        ca: CertificateAuthority | None = None,
        external: bool = False,
    ):
        self.kubeconfig = kubeconfig
        self.tools = tools
        self.workdir = workdir
        self.ca = ca
        self.external = external
        self.server, self._ca_pem = read_server(kubeconfig)

    # -- clients -----------------------------------------------------------------

    @functools.cached_property
    def api(self) -> ApiClient:
        """An ApiClient for the admin kubeconfig (make typed APIs with it)."""
        return new_client_from_config(str(self.kubeconfig))

    def client_for(self, kubeconfig: Path) -> ApiClient:
        """An ApiClient for another identity's kubeconfig (see kubeconfig_for_*)."""
        return new_client_from_config(str(kubeconfig))

    @property
    def core(self) -> CoreV1Api:
        return CoreV1Api(self.api)

    @property
    def batch(self) -> BatchV1Api:
        return BatchV1Api(self.api)

    @property
    def apps(self) -> AppsV1Api:
        return AppsV1Api(self.api)

    @property
    def rbac(self) -> RbacAuthorizationV1Api:
        return RbacAuthorizationV1Api(self.api)

    @property
    def custom(self) -> CustomObjectsApi:
        return CustomObjectsApi(self.api)

    @property
    def apiextensions(self) -> ApiextensionsV1Api:
        return ApiextensionsV1Api(self.api)

    @property
    def coordination(self) -> CoordinationV1Api:
        return CoordinationV1Api(self.api)

    # -- command-line tools ----------------------------------------------------------

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """The environment for a subprocess: KUBECONFIG set, the built tools first on PATH."""
        path = os.pathsep.join([*map(str, self.tools.bin_dirs), os.environ.get("PATH", "")])
        return {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig), "PATH": path}

    def _run(
        self,
        tool: str,
        args: Sequence[str],
        *,
        input: str | None,
        check: bool,
        kubeconfig: Path | None,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.tools[tool]), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(kubeconfig),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(args)} exited with {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster; AssertionError if it fails and check."""
        return self._run(
            "kubectl", args, input=input, check=check, kubeconfig=kubeconfig, timeout=timeout
        )

    def helm(
        self, *args: str, check: bool = True, kubeconfig: Path | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run the built helm against this cluster; AssertionError if it fails and check."""
        return self._run(
            "helm", args, input=None, check=check, kubeconfig=kubeconfig, timeout=timeout
        )

    # -- identities --------------------------------------------------------------------

    def kubeconfig_for_user(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig that authenticates as `user` in `groups` (a client certificate).

        Built-in control plane only: it needs the cluster CA's key. For an identity
        that works everywhere, use a ServiceAccount (`kubeconfig_for_service_account`).
        """
        if self.ca is None:
            raise RuntimeError("minting user certificates needs the built-in control plane's CA")
        safe = user.replace(":", "_").replace("/", "_")
        pair = self.ca.issue_client(f"user-{safe}-{uuid.uuid4().hex[:6]}", user, tuple(groups))
        return write_kubeconfig(
            self.workdir / "users" / f"{safe}.kubeconfig",
            server=self.server,
            ca_pem=self._ca_pem or b"",
            user=user,
            client_cert_pem=pair.cert_pem,
            client_key_pem=pair.key_pem,
        )

    def kubeconfig_for_service_account(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600
    ) -> Path:
        """A kubeconfig holding a fresh token (TokenRequest API) for a ServiceAccount,
        so a process runs "as" that ServiceAccount exactly as its pod would."""
        token = self.core.create_namespaced_service_account_token(
            name, namespace, {"spec": {"expirationSeconds": expiration_seconds}}
        ).status.token
        path = self.workdir / "service-accounts" / f"{namespace}.{name}.kubeconfig"
        return write_kubeconfig(
            path,
            server=self.server,
            ca_pem=self._ca_pem or b"",
            user=f"system:serviceaccount:{namespace}:{name}",
            token=token,
            namespace=namespace,
        )

    # -- namespaces ----------------------------------------------------------------------

    def create_namespace(
        self, prefix: str = "test", *, restricted: bool = True, labels: dict[str, str] | None = None
    ) -> str:
        """A new namespace (random suffix), enforcing the restricted Pod Security
        Standard unless `restricted=False`; returns once its default ServiceAccount exists
        (pods cannot be created before)."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        all_labels = {
            NAMESPACE_LABEL: "true",
            **(RESTRICTED_LABELS if restricted else {}),
            **(labels or {}),
        }
        self.core.create_namespace({"metadata": {"name": name, "labels": all_labels}})
        wait_for(
            lambda: self.core.read_namespaced_service_account("default", name),
            timeout=60,
            what=f"the default ServiceAccount of namespace {name}",
        )
        return name

    def delete_namespace(self, name: str) -> None:
        """Delete a namespace (in the background: its contents go with it)."""
        try:
            self.core.delete_namespace(name)
        except ApiException as e:
            if e.status != 404:
                raise
