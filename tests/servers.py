"""Real servers on 127.0.0.1 for the tests: a scriptable remote and misbehaving sockets."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

import attrs


@attrs.frozen
class Request:
    """One request the scripted remote received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.frozen
class Reply:
    """What the scripted remote answers."""

    status: int = 200
    body: bytes = b'{"success": true}'
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)


HEALTHY = Reply(body=b'{"status": 200, "endpoint": "active"}')


class ScriptedRemote:
    """
    A threaded HTTP server that records every request and answers by a script.

    ``script(request) -> Reply`` decides each answer; the default answers the
    protocol's success bodies. ``gate`` (an Event) can hold every POST until set.
    """

    def __init__(self, script: Optional[Callable[[Request], Reply]] = None) -> None:
        self.script = script or self.default_script
        # Guards requests: handler threads append while tests read.
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self.changed = threading.Condition(self._lock)
        self.gate = threading.Event()
        self.gate.set()
        remote = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                try:
                    self._answer()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client went away: nothing to answer

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Request(self.command, self.path, dict(self.headers.items()), body)
                if self.command == "POST":
                    remote.gate.wait(30)
                reply = remote.script(req)
                with remote._lock:
                    remote.requests.append(req)
                    remote.changed.notify_all()
                self.send_response(reply.status)
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, args=(0.02,), name="test-remote"
        )

    @staticmethod
    def default_script(request: Request) -> Reply:
        return HEALTHY if request.path.endswith("/health") else Reply()

    def start(self) -> ScriptedRemote:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def posts(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    def wait_for(self, predicate: Callable[[list[Request]], bool], timeout: float = 5.0) -> bool:
        """Wait until *predicate(requests)* holds; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self.requests):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.changed.wait(remaining)
            return True


class SilentServer:
    """Accepts connections, reads what arrives, and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._conns: list[socket.socket] = []
        self._stopped = threading.Event()
        self.accepted = threading.Semaphore(0)
        self._thread = threading.Thread(target=self._run, name="test-silent", daemon=True)

    def _run(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self._conns.append(conn)
            self.accepted.release()

    def start(self) -> SilentServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        for conn in self._conns:
            conn.close()
        self.sock.close()


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was just freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll *predicate* with a short back-off until true; False on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def lightd_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("lightd-sync")]


def serving(server: Any) -> Iterator[Any]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def read_request(conn: socket.socket, buf: bytes = b"") -> Optional[tuple[bytes, bytes, bytes]]:
    """
    Read one HTTP request from *conn* (after *buf*, what was read before).

    Returns:
        ``(head, body, rest)``: the request's head and body, and what came
        after it (a pipelined request); ``None`` if the client closed first.
    """
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return head, rest[:length], rest[length:]


class RawRemote:
    """
    A raw-socket remote for misbehaviour: reads each request's head and body, then runs *script*.

    ``script(conn, request_bytes)`` writes whatever it likes on *conn* (a
    trickle, a huge body, an echo); the connection is closed when it returns.
    ``stop()`` ends every script (``stopped`` is set) and joins the threads.
    """

    def __init__(self, script: Callable[[socket.socket, bytes], None]) -> None:
        self.script = script
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._run, name="test-raw", daemon=True)

    def _run(self) -> None:
        self.sock.settimeout(0.05)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head = data.split(b"\r\n\r\n", 1)[0].lower()
                for line in head.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        want = len(head) + 4 + int(line.split(b":", 1)[1])
                        while len(data) < want:
                            data += conn.recv(65536)
                self.script(conn, data)
            except OSError:
                pass  # the client went away: what the tests provoke

    def start(self) -> RawRemote:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self._thread.join(5)
        for thread in self._threads:
            thread.join(5)
        self.sock.close()


class BackloggedListener:
    """
    A port whose listen backlog is full: a new connect() hangs in the TCP handshake.

    Linux drops the SYN of a client when the accept queue of a listener is
    full, so the client retries for as long as its timeout allows.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._fillers: list[socket.socket] = []

    def start(self) -> BackloggedListener:
        for _ in range(8):  # more than a backlog of 0 (or 1) holds
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", self.port))
            self._fillers.append(filler)
        return self

    def stop(self) -> None:
        for filler in self._fillers:
            filler.close()
        self.sock.close()
