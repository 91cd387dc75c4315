"""The Kubernetes API calls the operator makes, and nothing else.

A small async client over aiohttp for the handful of requests the operator needs
(create a Job, patch its suspend flag, patch a TuningJob's status, post an Event,
read and write a Lease). Credentials come from kopf's own login helpers (in-cluster
service account or KUBECONFIG) and are refreshed when the API server says 401. Errors
become this module's exceptions, so the layers above decide what a 409 or a 422 means
without knowing HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

FIELD_MANAGER = "kubetune-operator"
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """The API server refused a request; `message` is its own explanation."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    """409: the object exists already (create) or changed since it was read (update)."""


class Invalid(ApiError):
    """422: the object breaks a validation rule; the message names the field."""


class BadRequest(ApiError):
    """400: the object cannot even be decoded (e.g. a list where an object belongs)."""


class Forbidden(ApiError):
    """403: RBAC, an admission policy or a ResourceQuota said no."""


_ERRORS = {400: BadRequest, 403: Forbidden, 404: NotFound, 409: Conflict, 422: Invalid}


class KubeApi:
    def __init__(self, info: kopf.ConnectionInfo, timeout: float = 30.0):
        self._info = info
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def connect(cls, timeout: float = 30.0) -> KubeApi:
        """Log in as kopf does: the in-cluster service account, else KUBECONFIG."""
        return cls(await asyncio.to_thread(_login), timeout)

    @property
    def server(self) -> str:
        return self._info.server

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                base_url=self._info.server.rstrip("/") + "/",
                headers={**self._info.as_http_headers(), "User-Agent": FIELD_MANAGER},
                connector=aiohttp.TCPConnector(ssl=self._info.as_ssl_context(), limit=64),
                timeout=self._timeout,
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        data = json.dumps(body) if body is not None else None
        for attempt in (1, 2):
            session = self._open()
            async with session.request(
                method,
                path.lstrip("/"),
                data=data,
                params=params,
                headers={"Content-Type": content_type, "Accept": "application/json"},
            ) as response:
                text = await response.text()
                if response.status == 401 and attempt == 1:
                    # Expired token (a projected service-account token rotates): log in again.
                    log.info("the API server said 401; logging in again")
                    await self.close()
                    self._info = await asyncio.to_thread(_login)
                    continue
                if response.status >= 400:
                    raise _error(response.status, text)
                return json.loads(text) if text else {}
        raise AssertionError("unreachable")

    # --- Jobs ---------------------------------------------------------------------

    async def create_job(self, job: Mapping[str, Any]) -> dict[str, Any]:
        namespace = job["metadata"]["namespace"]
        return await self.request(
            "POST",
            f"/apis/batch/v1/namespaces/{namespace}/jobs",
            body=job,
            params={"fieldManager": FIELD_MANAGER},
        )

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request(
                "GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/{quote(name)}"
            )
        except NotFound:
            return None

    async def patch_job(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self.request(
            "PATCH",
            f"/apis/batch/v1/namespaces/{namespace}/jobs/{quote(name)}",
            body=patch,
            content_type=MERGE_PATCH,
            params={"fieldManager": FIELD_MANAGER},
        )

    # --- TuningJobs ---------------------------------------------------------------

    async def patch_tuningjob_status(
        self,
        namespace: str,
        name: str,
        status_patch: Mapping[str, Any],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch the status; with resource_version, only if nothing changed since."""
        body: dict[str, Any] = {"status": dict(status_patch)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self.request(
            "PATCH",
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{quote(name)}/status",
            body=body,
            content_type=MERGE_PATCH,
            params={"fieldManager": FIELD_MANAGER},
        )

    async def list_tuningjobs(self, namespace: str | None, *, limit: int = 1) -> dict[str, Any]:
        """One page of TuningJobs in `namespace` (every namespace when None)."""
        where = f"namespaces/{namespace}/" if namespace else ""
        return await self.request(
            "GET", f"/apis/{GROUP}/{VERSION}/{where}{PLURAL}", params={"limit": str(limit)}
        )

    # --- Events -------------------------------------------------------------------

    async def create_event(self, event: Mapping[str, Any]) -> None:
        namespace = event["metadata"]["namespace"]
        await self.request(
            "POST", f"/apis/events.k8s.io/v1/namespaces/{namespace}/events", body=event
        )

    # --- Leases -------------------------------------------------------------------

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request(
                "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{quote(name)}"
            )
        except NotFound:
            return None

    async def create_lease(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        namespace = lease["metadata"]["namespace"]
        return await self.request(
            "POST", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", body=lease
        )

    async def replace_lease(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        """PUT with metadata.resourceVersion: Conflict if another replica wrote it since."""
        metadata = lease["metadata"]
        return await self.request(
            "PUT",
            f"/apis/coordination.k8s.io/v1/namespaces/{metadata['namespace']}/leases/{quote(metadata['name'])}",
            body=lease,
        )


def _login() -> kopf.ConnectionInfo:
    info = kopf.login_via_client(logger=log, settings=kopf.OperatorSettings())
    if info is None:  # pragma: no cover - the kubernetes package is a dependency of the operator
        raise RuntimeError("cannot log in to Kubernetes: the kubernetes package is missing")
    return info


def _error(status: int, text: str) -> ApiError:
    try:
        body = json.loads(text)
        reason, message = str(body.get("reason") or ""), str(body.get("message") or text)
    except ValueError:
        reason, message = "", text
    return _ERRORS.get(status, ApiError)(status, reason, message)
