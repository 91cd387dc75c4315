"""A fault-injecting TCP proxy in front of a real server (SeaweedFS's S3 port).

Clients connect to `FaultProxy.url`; each connection is forwarded to the upstream
byte for byte (S3 signatures cover the Host header the client sent, which the
upstream checks as received, so a transparent proxy needs no keys). The fault mode
is read when a connection starts a request and can be changed at any time:

- `pass`      forward;
- `slowdown`  answer every request with 503 SlowDown (S3's throttling reply), without
              forwarding it: what a store under load or restarting says;
- `reset`     forward the request, then cut the connection with a TCP reset after
              `reset_after` bytes of the response: a connection lost mid-object;
- `stall`     forward the request and hold the response back until the mode changes:
              a server that stops answering, past the client's read timeout;
- `refuse`    close each new connection at once (the server is down or unreachable);
              with `cut()`, which resets the open ones, a network partition.

It forwards TLS untouched too (the API server behind it: the certificate names
127.0.0.1, whatever the port).

`pause_response(after, match)` holds one matching response after `after` bytes until
`release()`: a chosen moment in the middle of an object (to replace it, or to kill the
client then). Counters say how many requests met each fault, so a test can show the
fault did happen.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator

SLOWDOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)
SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = "pass"
        self.reset_after = 64 * 1024
        self.faults: Counter[str] = Counter()
        self.requests: list[bytes] = []  # request lines seen ("PUT /bucket/key HTTP/1.1")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._mode_changed = threading.Condition()
        self._pause: tuple[int, bytes] | None = None
        self.paused = threading.Event()  # set while a paused response is held
        self._released = threading.Event()
        self._active: set[socket.socket] = set()
        self._active_lock = threading.Lock()
        threading.Thread(target=self._accept, name="fault proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, mode: str) -> None:
        assert mode in ("pass", "slowdown", "reset", "stall", "refuse"), mode
        with self._mode_changed:
            self.mode = mode
            self._mode_changed.notify_all()

    @contextlib.contextmanager
    def fault(self, mode: str) -> Iterator[None]:
        self.set(mode)
        try:
            yield
        finally:
            self.set("pass")

    def pause_response(self, after: int, match: bytes) -> None:
        """Hold the next response to a request line containing `match` after `after` bytes."""
        self._released.clear()
        self.paused.clear()
        self._pause = (after, match)

    def release(self) -> None:
        self._released.set()

    def cut(self) -> None:
        """Reset every open connection (long-lived watches included): a partition."""
        with self._active_lock:
            active = list(self._active)
        for sock in active:
            _reset(sock)

    def close(self) -> None:
        self._stop.set()
        self.set("pass")
        self._released.set()
        self._listener.close()

    # -- the proxy ------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "refuse":
                self.faults["refuse"] += 1
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            _reset(client)
            return
        client.settimeout(None)
        upstream.settimeout(None)
        with self._active_lock:
            self._active.update((client, upstream))
        request_line = [b""]
        done = threading.Event()

        def client_to_upstream() -> None:
            # Forward requests; on the first bytes of each, apply the mode.
            try:
                while True:
                    data = client.recv(65536)
                    if not data:
                        break
                    if data[:8].split(b" ")[0] in (b"GET", b"PUT", b"POST", b"HEAD", b"DELETE"):
                        line = data.split(b"\r\n", 1)[0]
                        request_line[0] = line
                        self.requests.append(line)
                        if self.mode == "slowdown":
                            self.faults["slowdown"] += 1
                            body = SLOWDOWN_BODY
                            client.sendall(SLOWDOWN % (len(body), body))
                            break
                    upstream.sendall(data)
            except OSError:
                pass
            finally:
                done.set()
                _close(upstream)
                _close(client)

        threading.Thread(target=client_to_upstream, daemon=True).start()
        sent = 0
        paused_here = False
        try:
            while not done.is_set():
                data = upstream.recv(65536)
                if not data:
                    break
                mode = self.mode
                if mode == "stall":
                    self.faults["stall"] += 1
                    with self._mode_changed:
                        self._mode_changed.wait_for(lambda: self.mode != "stall")
                    if self._stop.is_set():
                        break
                if mode == "reset" and sent + len(data) > self.reset_after:
                    self.faults["reset"] += 1
                    client.sendall(data[: max(0, self.reset_after - sent)])
                    _reset(client)
                    break
                pause = self._pause
                if (
                    pause
                    and not paused_here
                    and pause[1] in request_line[0]
                    and sent + len(data) > pause[0]
                ):
                    self._pause, paused_here = None, True
                    cut = max(0, pause[0] - sent)
                    client.sendall(data[:cut])
                    sent += cut
                    data = data[cut:]
                    self.paused.set()
                    self._released.wait()
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            _close(upstream)
            _close(client)
            with self._active_lock:
                self._active.difference_update((client, upstream))


def _reset(sock: socket.socket) -> None:
    """Cut the connection, as a crashed peer or a middlebox does (SO_LINGER 0: a reset).

    shutdown() first: a close() alone does not end a recv() blocked in the other
    forwarding thread, and the peer would see nothing until its read timeout.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes a recv() blocked in the other thread
    with contextlib.suppress(OSError):
        sock.close()
