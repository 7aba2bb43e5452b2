"""
Misbehaving servers on 127.0.0.1 for the fault-injection suite.

:class:`FaultServer` is a small raw-socket HTTP/1.1 remote whose behaviour (its
*mode*) a test switches while an engine talks to it: healthy, an error status,
silent, slow, cutting the answer short, garbage, refusing connections (the
listening socket is closed and later re-opened on the same port), flapping,
and TLS with a certificate that can be swapped. :class:`ForwardProxy` is an
HTTP proxy for absolute-form requests and ``CONNECT`` tunnels.

Every socket is closed on ``stop()`` (the suite runs with ``-W error``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import ssl
import threading
import time
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import attrs

from ..servers import HEALTHY, Reply, Request

__all__ = [
    "CloseWithoutAnswer",
    "CutAfterHeaders",
    "CutSecondRequest",
    "FaultServer",
    "ForwardProxy",
    "Hang",
    "Healthy",
    "Mode",
    "Proxied",
    "Respond",
    "Slow",
]


# -- modes: what the remote does with one request ------------------------------


class Mode:
    """What a :class:`FaultServer` does with a request; subclasses override :meth:`handle`."""

    def handle(self, server: FaultServer, conn: socket.socket, req: Request, nth: int) -> bool:
        """
        Answer *req*, the *nth* request (from 1) on *conn*.

        Returns:
            True to keep the connection open for the next request.
        """
        raise NotImplementedError


@attrs.frozen
class Healthy(Mode):
    """The protocol's answers: active health, ``{"success": true}`` to updates."""

    def handle(self, server: FaultServer, conn: socket.socket, req: Request, nth: int) -> bool:
        if req.method == "POST":  # processed first, then answered: as a remote does
            server.accept_update(req)
        reply = HEALTHY if req.path.endswith("/health") else Reply()
        server.write_reply(conn, reply)
        return True


@attrs.frozen
class Respond(Mode):
    """The same answer to every request (an error status, garbage, ...)."""

    reply: Reply

    def handle(self, server: FaultServer, conn: socket.socket, req: Request, nth: int) -> bool:
        server.write_reply(conn, self.reply)
        return True


@attrs.frozen
class Slow(Mode):
    """
    Answer as healthy, but only after *delay* seconds, and only to a client still waiting.

    A client that timed out has closed the connection; its request is dropped
    unprocessed. (A remote that applies such a request anyway can end up
    holding a stale status that no client can correct: see the suite's notes.)
    """

    delay: float

    def handle(self, server: FaultServer, conn: socket.socket, req: Request, nth: int) -> bool:
        if server.stopped.wait(self.delay) or _client_gone(conn):
            return False
        return Healthy().handle(server, conn, req, nth)


def _client_gone(conn: socket.socket) -> bool:
    """Whether the client closed its end (EOF waiting), without consuming anything."""
    if isinstance(conn, ssl.SSLSocket):
        return False  # no MSG_PEEK on TLS; Slow is used on plain connections
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


@attrs.frozen
class Hang(Mode):
    """Read the request and never answer (until the client gives up or the server stops)."""

    def handle(self, server: FaultServer, conn: socket.socket, req: Request, nth: int) -> bool:
        with contextlib.suppress(OSError):
            while not server.stopped.is_set() and conn.recv(4096):
                pass
        return False


@attrs.frozen
class CutAfterHeaders(Mode):
    """Send the status line, headers and part of the body, then close the connection."""

    def handle(self, server: FaultServer, conn: socket.socket, req: Request, nth: int) -> bool:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n"
        with contextlib.suppress(OSError):
            conn.sendall(head + b'{"succ')
        return False


@attrs.frozen
class CutSecondRequest(Mode):
    """
    Answer the first request on a connection; read the second and close without answering.

    This is what a remote that closes idle kept-alive connections looks like
    to a client whose request crossed the close.
    """

    def handle(self, server: FaultServer, conn: socket.socket, req: Request, nth: int) -> bool:
        if nth >= 2:
            return False
        return Healthy().handle(server, conn, req, nth)


@attrs.frozen
class CloseWithoutAnswer(Mode):
    """Read every request and close the connection without a word."""

    def handle(self, server: FaultServer, conn: socket.socket, req: Request, nth: int) -> bool:
        return False


# -- the server ----------------------------------------------------------------


def _read_request(conn: socket.socket, buf: bytearray) -> Optional[Request]:
    """Read one request from *conn* (leftover bytes in *buf*); None when the client closed."""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), 0))
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        rest += chunk
    buf[:] = rest[length:]
    return Request(method, target, headers, rest[:length])


class FaultServer:
    """
    An HTTP/1.1 remote on 127.0.0.1 whose behaviour a test switches at run time.

    Args:
        mode: How requests are answered at first (see :class:`Mode`).
        refusing: Start with the listening socket closed (connections are refused).
        tls: A server-side :class:`ssl.SSLContext`; swap it with :attr:`tls` later.
        port: The port to listen on (0: any free port).
    """

    def __init__(
        self,
        mode: Mode = Healthy(),
        *,
        refusing: bool = False,
        tls: Optional[ssl.SSLContext] = None,
        port: int = 0,
    ) -> None:
        self.mode = mode  # read once per request: switching it is atomic
        self.tls = tls
        self.stopped = threading.Event()
        # Guards requests, accepted, _conns, _threads and _listener.
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        self.requests: list[Request] = []
        self.accepted: dict[str, dict[str, Any]] = {}  # server id -> latest body processed
        self.connections = 0  # accepted TCP connections
        self.outages = 0  # times flap() took the remote down
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: Optional[tuple[socket.socket, threading.Thread]] = None
        self._flapper: Optional[threading.Thread] = None
        self._unflap = threading.Event()
        self._bind(port)
        if refusing:
            self.refuse()
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"

    # -- listening ---------------------------------------------------------

    def _bind(self, port: int) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        sock.settimeout(0.02)
        self.port = sock.getsockname()[1]
        thread = threading.Thread(target=self._accept, args=(sock,), name="test-fault-accept")
        with self._lock:
            self._listener = (sock, thread)
            self._threads.append(thread)
        thread.start()

    def refuse(self, *, drop: bool = True) -> None:
        """
        Stop listening: new connections are refused at once.

        With *drop*, open connections are cut too, as when a remote goes down.
        """
        with self._lock:
            listener, self._listener = self._listener, None
            conns = list(self._conns) if drop else []
        if listener is not None:
            sock, thread = listener
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # no longer listening; wakes accept()
            thread.join(5)  # the accept thread closes it: no close() under its feet
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def listen(self) -> None:
        """Listen again on the same port."""
        with self._lock:
            listening = self._listener is not None
        if not listening and not self.stopped.is_set():
            self._bind(self.port)

    @property
    def listening(self) -> bool:
        with self._lock:
            return self._listener is not None

    def flap(self, down: float, up: float) -> None:
        """Refuse for *down* seconds, listen for *up* seconds, over and over, on a timer thread."""
        unflap = self._unflap = threading.Event()

        def run() -> None:
            while not self.stopped.is_set():
                self.refuse()
                self.outages += 1
                if unflap.wait(down):
                    return
                self.listen()
                if unflap.wait(up):
                    return

        self._flapper = threading.Thread(target=run, name="test-fault-flapper")
        self._flapper.start()

    def stop_flapping(self) -> None:
        """End the flapping, listening."""
        self._unflap.set()
        if self._flapper is not None:
            self._flapper.join(5)
            self._flapper = None
        self.listen()

    def _accept(self, sock: socket.socket) -> None:
        try:
            while not self.stopped.is_set():
                with self._lock:
                    if self._listener is None or self._listener[0] is not sock:
                        return
                try:
                    conn, _ = sock.accept()
                except socket.timeout:
                    continue
                except OSError:
                    return  # shut down by refuse()
                self._serve_in_thread(conn)
        finally:
            sock.close()

    def _serve_in_thread(self, conn: socket.socket) -> None:
        thread = threading.Thread(target=self._serve, args=(conn,), name="test-fault-conn")
        with self._lock:
            if self.stopped.is_set():
                conn.close()
                return
            self.connections += 1
            self._conns.add(conn)
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    # -- answering ---------------------------------------------------------

    def _serve(self, raw: socket.socket) -> None:
        conn = raw
        try:
            conn.settimeout(10)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = self.tls
            if tls is not None:
                conn = tls.wrap_socket(raw, server_side=True)
                with self._lock:
                    self._conns.add(conn)
            buf = bytearray()
            nth = 0
            while not self.stopped.is_set():
                req = _read_request(conn, buf)
                if req is None:
                    return
                nth += 1
                with self._lock:
                    self.requests.append(req)
                    self.changed.notify_all()
                if not self.mode.handle(self, conn, req, nth):
                    return
        except (OSError, ValueError):
            return  # a client that went away, a failed handshake, a request cut short
        finally:
            with self._lock:
                self._conns.discard(raw)
                self._conns.discard(conn)
            conn.close()
            raw.close()

    @staticmethod
    def write_reply(conn: socket.socket, reply: Reply) -> None:
        reason = http.client.responses.get(reply.status, "Whatever")
        head = [f"HTTP/1.1 {reply.status} {reason}"]
        head += [f"{name}: {value}" for name, value in reply.headers]
        head.append(f"Content-Length: {len(reply.body)}")
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body)

    def accept_update(self, req: Request) -> None:
        """Record *req* as accepted: the remote now holds this status of its server."""
        body = json.loads(req.body)
        with self._lock:
            self.accepted[body["server"]] = body
            self.changed.notify_all()

    # -- observing -----------------------------------------------------------

    def latest(self) -> dict[str, dict[str, Any]]:
        """The latest accepted body of every server."""
        with self._lock:
            return dict(self.accepted)

    def posts(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    def wait_for(self, predicate: Callable[[FaultServer], bool], timeout: float = 5.0) -> bool:
        """Wait until *predicate(self)* holds (checked on every request); False on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._lock:
                self.changed.wait(min(remaining, 0.05))
        return True

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> FaultServer:
        return self  # listening since __init__; here for tests.servers.serving()

    def stop(self) -> None:
        self.stopped.set()
        self._unflap.set()
        if self._flapper is not None:
            self._flapper.join(5)
        self.refuse(drop=True)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)


# -- the proxy -------------------------------------------------------------------


@attrs.frozen
class Proxied:
    """One request the proxy handled: ``CONNECT host:port`` or an absolute-form request."""

    method: str
    target: str
    proxy_authorization: Optional[str]


class ForwardProxy:
    """
    An HTTP forward proxy on 127.0.0.1.

    Absolute-form requests (``POST http://host:port/path``) are forwarded on a
    new upstream connection each; ``CONNECT host:port`` opens a tunnel. An
    upstream that cannot be reached gets a 502 answer.
    """

    def __init__(self) -> None:
        self.server = FaultServer(_ProxyMode(self))
        self.port = self.server.port
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()  # guards handled
        self.handled: list[Proxied] = []

    def record(self, req: Request) -> None:
        auth = next((v for k, v in req.headers.items() if k.lower() == "proxy-authorization"), None)
        with self._lock:
            self.handled.append(Proxied(req.method, req.path, auth))

    def seen(self) -> list[Proxied]:
        with self._lock:
            return list(self.handled)

    def start(self) -> ForwardProxy:
        return self

    def stop(self) -> None:
        self.server.stop()


_HOP_BY_HOP = {"proxy-authorization", "proxy-connection", "connection", "keep-alive"}


@attrs.frozen
class _ProxyMode(Mode):
    proxy: ForwardProxy

    def handle(self, server: FaultServer, conn: socket.socket, req: Request, nth: int) -> bool:
        self.proxy.record(req)
        if req.method == "CONNECT":
            return self._tunnel(server, conn, req.path)
        target = urlsplit(req.path)
        if not target.hostname:
            server.write_reply(conn, Reply(status=400, body=b"absolute-form only"))
            return False
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        try:
            upstream.connect()
            # http.client sends headers and body apart: without this, Nagle's
            # algorithm and delayed ACKs add 40 ms to every request.
            upstream.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            path = target.path + (f"?{target.query}" if target.query else "")
            upstream.request(req.method, path, body=req.body or None, headers=headers)
            answer = upstream.getresponse()
            body = answer.read()
            kept = tuple(
                (k, v)
                for k, v in answer.getheaders()
                if k.lower() not in _HOP_BY_HOP | {"content-length", "transfer-encoding"}
            )
            server.write_reply(conn, Reply(status=answer.status, body=body, headers=kept))
        except (OSError, http.client.HTTPException):
            server.write_reply(conn, Reply(status=502, body=b"upstream unreachable"))
        finally:
            upstream.close()
        return True

    @staticmethod
    def _tunnel(server: FaultServer, conn: socket.socket, target: str) -> bool:
        host, _, port = target.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=10)
        except OSError:
            server.write_reply(conn, Reply(status=502, body=b"upstream unreachable"))
            return False
        with upstream:
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            pump = threading.Thread(
                target=_pump, args=(upstream, conn, server.stopped), name="test-proxy-pump"
            )
            pump.start()
            _pump(conn, upstream, server.stopped)
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_RDWR)
            pump.join(10)
        return False


def _pump(src: socket.socket, dst: socket.socket, stopped: threading.Event) -> None:
    """Copy bytes from *src* to *dst* until either side closes."""
    with contextlib.suppress(OSError):
        while not stopped.is_set():
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
