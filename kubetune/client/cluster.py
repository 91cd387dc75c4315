"""The API calls behind `kubetune status/logs/wait/plot`, through the user's kubeconfig.

Only reads: TuningJobs, their trainer pods and pod logs. Needs the `client` extra
(kubernetes; boto3 for s3:// metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION
from kubetune.client.view import WaitExit, newest_pod, outcome
from kubetune.operator.builders import CONTAINER, TUNINGJOB_LABEL, child_name


class ClientError(Exception):
    """Something `kubetune status/logs/wait/plot` cannot do; exit_code says what kind."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class TuningJobNotFound(ClientError):
    def __init__(self, namespace: str, name: str):
        super().__init__(
            f'TuningJob "{name}" not found in namespace "{namespace}" '
            "(kubectl get tuningjobs -n NAMESPACE lists them)",
            WaitExit.NOT_FOUND,
        )


def _kubernetes() -> Any:
    try:
        import kubernetes
    except ImportError:
        raise ClientError(
            "this command reads the cluster with the kubernetes package: pip install 'kubetune[client]'"
        ) from None
    return kubernetes


class Cluster:
    """The user's cluster, as their kubeconfig (or the pod's service account) reaches it."""

    def __init__(
        self,
        *,
        namespace: str | None = None,
        context: str | None = None,
        kubeconfig: str | None = None,
    ):
        kubernetes = _kubernetes()
        config = kubernetes.config
        try:
            self.api = config.new_client_from_config(config_file=kubeconfig, context=context)
            current = namespace
            if current is None:
                _, active = config.list_kube_config_contexts(config_file=kubeconfig)
                if context:
                    contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
                    active = next((c for c in contexts if c["name"] == context), active)
                current = (active or {}).get("context", {}).get("namespace")
        except config.ConfigException as e:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                raise ClientError(f"cannot read a kubeconfig ({e}); set KUBECONFIG") from None
            self.api = kubernetes.client.ApiClient()
            current = namespace
        self.namespace = current or "default"
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self._exceptions = kubernetes.client.exceptions
        self._watch = kubernetes.watch

    def close(self) -> None:
        self.api.close()

    def tuningjob(self, name: str) -> dict[str, Any]:
        try:
            return self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        except self._exceptions.ApiException as e:
            if e.status == 404:
                raise TuningJobNotFound(self.namespace, name) from None
            raise ClientError(f"reading TuningJob {self.namespace}/{name}: {_reason(e)}") from None

    def names(self) -> list[str]:
        listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        return sorted(item["metadata"]["name"] for item in listed.get("items") or [])

    def pods(self, name: str) -> list[dict[str, Any]]:
        listed = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{TUNINGJOB_LABEL}={child_name(name)}"
        )
        return [self.api.sanitize_for_serialization(p) for p in listed.items]

    def wait(
        self,
        name: str,
        timeout: float | None,
        on_change: Callable[[dict[str, Any]], None] = lambda body: None,
    ) -> tuple[WaitExit, dict[str, Any] | None]:
        """Watch the TuningJob until it ends (or is deleted, or the timeout passes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        body = self.tuningjob(name)
        while True:
            on_change(body)
            ended = outcome(body)
            if ended is not None:
                return ended, body
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return WaitExit.TIMED_OUT, body
            watch = self._watch.Watch()
            try:
                for event in watch.stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    field_selector=f"metadata.name={name}",
                    resource_version=body["metadata"]["resourceVersion"],
                    timeout_seconds=max(1, int(min(left or 60, 60))),
                ):
                    if event["type"] == "DELETED":
                        raise TuningJobNotFound(self.namespace, name)
                    if event["type"] == "ERROR":
                        break  # e.g. 410 Gone: read it again below
                    body = event["object"]
                    on_change(body)
                    ended = outcome(body)
                    if ended is not None:
                        return ended, body
                    if deadline is not None and time.monotonic() >= deadline:
                        return WaitExit.TIMED_OUT, body
            finally:
                watch.stop()
            body = self.tuningjob(name)

    def logs(self, name: str, *, follow: bool, tail: int | None) -> Iterator[str]:
        """The log of the newest trainer pod; ClientError when there is none yet."""
        self.tuningjob(name)  # a clear "not found" first
        pod = newest_pod(self.pods(name))
        if pod is None:
            raise ClientError(
                f"TuningJob {self.namespace}/{name} has no trainer pod yet; "
                f"`kubetune status {name}` says what it waits for"
            )
        pod_name = pod["metadata"]["name"]
        try:
            if not follow:
                text = self.core.read_namespaced_pod_log(
                    pod_name, self.namespace, container=CONTAINER, tail_lines=tail
                )
                yield from text.splitlines()
                return
            response = self.core.read_namespaced_pod_log(
                pod_name,
                self.namespace,
                container=CONTAINER,
                follow=True,
                tail_lines=tail,
                _preload_content=False,
            )
            pending = b""
            try:
                for chunk in response.stream(decode_content=True):
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        yield line.decode(errors="replace")
                if pending:
                    yield pending.decode(errors="replace")
            finally:
                response.release_conn()
        except self._exceptions.ApiException as e:
            raise ClientError(f"reading the log of pod {pod_name}: {_reason(e)}") from None


def _reason(e: Any) -> str:
    import json

    try:
        return json.loads(e.body).get("message") or f"{e.status} {e.reason}"
    except (TypeError, ValueError, AttributeError):
        return f"{e.status} {e.reason}"
