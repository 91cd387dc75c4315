"""A real Kubernetes control plane on loopback: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, from the binaries hack/build-tools.sh built.

Configured like a small production cluster where it matters to an operator:
TLS everywhere the API server is involved, client-certificate authentication (so a
test can mint any user), service-account tokens signed by a real key,
`--authorization-mode=Node,RBAC`, PodSecurity admission (on by default) and
NodeRestriction, the controller-manager running each controller under its own
service account. Ports are chosen free; all data lives in one folder.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from tests.ground.kubeconfig import write_kubeconfig
from tests.ground.pki import CertificateAuthority, KeyPair, write_signing_key
from tests.ground.process import GroundError, ManagedProcess, free_port, wait_until
from tests.ground.tools import Tools

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "kubetune-admin"
START_TIMEOUT = 120.0  # generous: a cold API server on a busy 2-core machine takes ~20 s


def _https_get(
    url: str, *, ca: Path | None, client: KeyPair | None, timeout: float = 5.0
) -> tuple[int, str]:
    if ca is None:
        context = ssl._create_unverified_context()  # the component's own self-signed cert
    else:
        context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(str(client.cert_path), str(client.key_path))
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


class ControlPlane:
    """The four control-plane processes and their PKI, all under `folder`.

    `start()` returns once the API server is ready and the controller-manager and
    scheduler report healthy; `stop()` stops them in reverse order. `kubeconfig` is
    the admin's (group system:masters).
    """

    def __init__(self, folder: Path, tools: Tools, *, tie_to_parent: bool = True):
        self.folder = folder
        self.tools = tools
        self.tie_to_parent = tie_to_parent
        self.pki_dir = folder / "pki"
        self.log_dir = folder / "logs"
        self.processes: list[ManagedProcess] = []
        self.ca: CertificateAuthority | None = None
        self.server = ""
        self.kubeconfig = folder / "admin.kubeconfig"

    # -- PKI and kubeconfigs --------------------------------------------------

    def _write_pki(self, api_port: int) -> dict[str, KeyPair]:
        ca = self.ca = CertificateAuthority.create(self.pki_dir)
        self.server = f"https://127.0.0.1:{api_port}"
        pairs = {
            "serving": ca.issue_server(
                "apiserver",
                "kube-apiserver",
                dns_names=[
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ],
                ips=["127.0.0.1", "10.96.0.1"],
            ),
            "admin": ca.issue_client("admin", ADMIN_USER, ("system:masters",)),
            "controller-manager": ca.issue_client(
                "controller-manager", "system:kube-controller-manager"
            ),
            "scheduler": ca.issue_client("scheduler", "system:kube-scheduler"),
        }
        # The aggregation layer's own CA and client (what an APIService such as
        # metrics-server is called with); without it the components log errors about
        # the missing request-header CA forever.
        front_proxy = CertificateAuthority.create(self.pki_dir / "front-proxy")
        pairs["front-proxy-client"] = front_proxy.issue_client(
            "front-proxy-client", "front-proxy-client"
        )
        write_signing_key(self.pki_dir)
        self._kubeconfig_for(pairs["admin"], ADMIN_USER, self.kubeconfig)
        for component in ("controller-manager", "scheduler"):
            self._kubeconfig_for(
                pairs[component], component, self.folder / f"{component}.kubeconfig"
            )
        return pairs

    def _kubeconfig_for(self, pair: KeyPair, user: str, path: Path) -> Path:
        assert self.ca is not None
        return write_kubeconfig(
            path,
            server=self.server,
            ca_pem=self.ca.pair.cert_pem,
            user=user,
            client_cert_pem=pair.cert_pem,
            client_key_pem=pair.key_pem,
        )

    def kubeconfig_for_user(
        self, user: str, groups: tuple[str, ...] = (), path: Path | None = None
    ) -> Path:
        """A kubeconfig authenticating as `user` in `groups` (a client certificate)."""
        if self.ca is None:
            raise GroundError("control plane", "not started")
        safe = user.replace(":", "_").replace("/", "_")
        pair = self.ca.issue_client(f"user-{safe}", user, groups)
        return self._kubeconfig_for(
            pair, user, path or self.folder / "users" / f"{safe}.kubeconfig"
        )

    # -- processes -------------------------------------------------------------

    def _process(self, name: str, argv: list[str]) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.log_dir / f"{name}.log").start(
            tie_to_parent=self.tie_to_parent
        )
        self.processes.append(process)
        return process

    def start(self, *, api_only: bool = False) -> None:
        """Start all four and wait until they serve; GroundError (with log tails) if not.

        `api_only`: etcd and the API server alone, a bare cluster for tests of what a
        client does against an API that lacks something (no controllers act there).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        api_port = free_port()
        pairs = self._write_pki(api_port)
        self._start_etcd()
        self._start_apiserver(api_port, pairs)
        if api_only:
            return
        controller_manager = self._start_controller_manager()
        scheduler = self._start_scheduler()
        for process, port in (controller_manager, scheduler):
            wait_until(
                lambda port=port: (
                    _https_get(f"https://127.0.0.1:{port}/healthz", ca=None, client=None)[0] == 200
                ),
                timeout=START_TIMEOUT,
                what="healthy",
                part=process.name,
                processes=[process],
            )

    def _start_etcd(self) -> None:
        client_port, peer_port = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        etcd = self._process(
            "etcd",
            [
                str(self.tools["etcd"]),
                "--name=ground",
                f"--data-dir={self.folder / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=ground={peer_url}",
                # Test data: durability across power loss is worth nothing here, and
                # fsync on every write slows the API server down several times.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self.etcd_url = client_url

        def healthy() -> bool:
            with urllib.request.urlopen(f"{client_url}/health", timeout=2) as r:
                return json.loads(r.read()).get("health") == "true"

        wait_until(healthy, timeout=START_TIMEOUT, what="healthy", part="etcd", processes=[etcd])

    def _start_apiserver(self, port: int, pairs: dict[str, KeyPair]) -> None:
        pki = self.pki_dir
        apiserver = self._process(
            "kube-apiserver",
            [
                str(self.tools["kube-apiserver"]),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.folder / 'apiserver-certs'}",
                f"--tls-cert-file={pairs['serving'].cert_path}",
                f"--tls-private-key-file={pairs['serving'].key_path}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--requestheader-client-ca-file={pki / 'front-proxy' / 'ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pairs['front-proxy-client'].cert_path}",
                f"--proxy-client-key-file={pairs['front-proxy-client'].key_path}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                # PodSecurity is on by default; NodeRestriction keeps the local node
                # to its own Node and pods, as a kubelet's credentials would be.
                "--enable-admission-plugins=NodeRestriction",
                # Privileged pods must be *allowed* by the API so that the restricted
                # Pod Security Standard is what rejects them in a labelled namespace.
                "--allow-privileged=true",
                # No Service "kubernetes" endpoints: its address would be loopback,
                # which Endpoints may not hold, and nothing in-cluster needs it.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
        )
        admin = pairs["admin"]
        ca = pki / "ca.crt"

        def ready() -> bool:
            status, _ = _https_get(f"{self.server}/readyz", ca=ca, client=admin)
            return status == 200

        wait_until(
            ready,
            timeout=START_TIMEOUT,
            what="ready (/readyz)",
            part="kube-apiserver",
            processes=[apiserver],
        )

    def _component_flags(self, component: str, port: int) -> list[str]:
        kubeconfig = self.folder / f"{component}.kubeconfig"
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.folder / f'{component}-certs'}",
            "--leader-elect=false",
        ]

    def _start_controller_manager(self) -> tuple[ManagedProcess, int]:
        port = free_port()
        pki = self.pki_dir
        process = self._process(
            "kube-controller-manager",
            [
                str(self.tools["kube-controller-manager"]),
                *self._component_flags("controller-manager", port),
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                # Each controller acts as its own ServiceAccount, so RBAC is exercised
                # as in a real cluster rather than bypassed by one superuser.
                "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
            ],
        )
        return process, port

    def _start_scheduler(self) -> tuple[ManagedProcess, int]:
        port = free_port()
        process = self._process(
            "kube-scheduler",
            [str(self.tools["kube-scheduler"]), *self._component_flags("scheduler", port)],
        )
        return process, port

    def stop(self) -> None:
        """Stop every process, newest first (etcd last, so the others exit cleanly)."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
