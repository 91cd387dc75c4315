"""A recording pass-through in front of the Kubernetes API server, for RBAC tests.

The process under test gets a kubeconfig whose server is this proxy (plain HTTP on
loopback) and whose credentials are its own bearer token; the proxy forwards every
request unchanged, Authorization header included, to the real API server over TLS,
streams the answer back (watches too) and records what was asked and what the API
server answered. So the API server itself authenticates and authorizes each request
as the process's identity; the record says which (API group, resource, verb) it used
and which were refused, the way an audit log would, on any cluster (also one whose
audit log a test cannot read).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import aiohttp
import yaml
from aiohttp import web

# Headers that belong to one hop, not to the request or the answer.
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade",
               "proxy-authorization", "te", "trailer", "content-encoding"}  # fmt: skip


@dataclass(frozen=True)
class ApiRequest:
    """One request as the API server's authorizer sees it (its RequestInfo)."""

    method: str
    path: str
    status: int
    group: str | None  # None: a non-resource URL (discovery, /version)
    resource: str  # "jobs", or "tuningjobs/status" for a subresource
    verb: str
    namespace: str | None

    @property
    def permission(self) -> tuple[str, str, str]:
        return (self.group or "", self.resource, self.verb)


def request_info(method: str, path: str, query: str) -> tuple[str | None, str, str, str | None]:
    """(group, resource[/subresource], verb, namespace) of a request, as the API server derives them."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None, path, method.lower(), None
    namespace = None
    if len(rest) > 1 and rest[0] == "namespaces":
        namespace = rest[1]
        # namespaces/NAME/status and /finalize are the Namespace object's own subresources.
        if len(rest) > 2 and rest[2] not in ("status", "finalize"):
            rest = rest[2:]
    if not rest:
        return None, path, method.lower(), namespace  # discovery of a group version
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    watch = parse_qs(query).get("watch", ["false"])[0] in ("true", "1")
    verb = {
        "GET": "watch" if watch else ("get" if name else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }[method]
    return group, resource, verb, namespace


class ApiRecorder:
    """Serve on 127.0.0.1:`port` in a thread of its own; forward to `upstream`."""

    def __init__(self, upstream: str, ca_pem: bytes | None, port: int):
        self.upstream = upstream.rstrip("/")
        self.port = port
        self.requests: list[ApiRequest] = []
        # The kubeconfig's CA, else the system's (a cluster with a public certificate).
        self._ssl = (
            ssl.create_default_context(cadata=ca_pem.decode())
            if ca_pem
            else ssl.create_default_context()
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="api-recorder", daemon=True
        )
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiRecorder:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def recorded(self) -> list[ApiRequest]:
        with self._lock:
            return list(self.requests)

    def write_kubeconfig(self, path: Path, token: str, namespace: str) -> Path:
        """A kubeconfig that reaches the API server through this recorder with `token`."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "recorded", "cluster": {"server": self.url}}],
            "users": [{"name": "recorded", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "recorded",
                    "context": {"cluster": "recorded", "user": "recorded", "namespace": namespace},
                }
            ],
            "current-context": "recorded",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        # Upstream first: that ends the watch streams still being relayed.
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
        # Relays of requests whose clients never closed (long watches) end here.
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        body = await request.read()
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as upstream:
            group, resource, verb, namespace = request_info(
                request.method, request.path, request.query_string
            )
            with self._lock:
                self.requests.append(
                    ApiRequest(
                        request.method,
                        request.path,
                        upstream.status,
                        group,
                        resource,
                        verb,
                        namespace,
                    )
                )
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS},
            )
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (ConnectionResetError, aiohttp.ClientError):
                pass  # the client went away (a watch it stopped): nothing left to relay
            return response
