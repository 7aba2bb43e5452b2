"""Real servers on 127.0.0.1 for the tests: a scriptable remote and misbehaving sockets."""

from __future__ import annotations

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
