"""
Capture the exact requests a transport sends, on a raw socket on 127.0.0.1.

``docs/conf.py`` runs :func:`capture` at every build and writes the result to
``docs/_generated/``, which ``protocol.md`` includes: the "captured on the
wire" requests are always what the code sends. ``tests/test_docs.py`` runs it
too and compares it with the header table of ``protocol.md``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: The example token of the docs (never a real one).
DOC_TOKEN = "lightd_ad2f7fc49ed640429c450e14ed07c8d5"  # noqa: S105
_ANSWERS = {
    "GET": b'{"status": 200, "endpoint": "active"}',
    "POST": b'{"success": true}',
}
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _read_request(conn: socket.socket, buffer: bytearray) -> bytes:
    """Read one whole request (head and body) from *conn*; b"" when it closed."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        rest += chunk
    del buffer[:]
    buffer += rest[length:]
    return head + b"\r\n\r\n" + rest[:length]


class _RawServer:
    """Answers every request on one port like a healthy remote and keeps the raw bytes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self._thread = threading.Thread(target=self._run, name="wire-capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                with conn:
                    self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        buffer = bytearray()
        while True:
            raw = _read_request(conn, buffer)
            if not raw:
                return
            self.requests.append(raw)
            body = _ANSWERS.get(raw.split(b" ", 1)[0].decode(), b"{}")
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def _no_proxy_variables() -> Iterator[None]:
    """The build machine's proxy must not reroute a request to 127.0.0.1."""
    saved = {k: v for k, v in os.environ.items() if k.lower() in _PROXY_VARIABLES}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(saved)


def capture(transport: str = "http") -> dict[str, Any]:
    """
    Send one ``GET /health`` and one error update with *transport*; return what went out.

    Returns:
        ``{"url": remote.url, "get": text, "post": text}``, each request as
        text with LF line ends, exactly in the order it was sent.
    """
    from lightd_sync import RemoteConfig, Update
    from lightd_sync._ids import new_event_id
    from lightd_sync._transports.registry import make_transport

    server = _RawServer()
    url = f"http://127.0.0.1:{server.port}/api"
    try:
        config = RemoteConfig(
            enabled=True, url=url, token=DOC_TOKEN, transport=transport, timeout=5
        )
        update = Update(
            "my-server-001",
            "failed",
            "Docker container creation failed: image not found",
            event_id=new_event_id(),
        )
        with _no_proxy_variables(), make_transport(config) as sender:
            sender.check_health()
            sender.send(update)
    finally:
        server.close()
    get, post = (raw.decode("latin-1").replace("\r\n", "\n") for raw in server.requests)
    return {"url": url, "get": get, "post": post}


def write(folder: Path) -> None:
    """Write ``wire-get.http``, ``wire-post.http`` and ``wire-url.txt`` into *folder*."""
    found = capture()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wire-get.http").write_text(found["get"].rstrip("\n") + "\n", encoding="utf-8")
    (folder / "wire-post.http").write_text(found["post"] + "\n", encoding="utf-8")
    (folder / "wire-url.txt").write_text(found["url"] + "\n", encoding="utf-8")
