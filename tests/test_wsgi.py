"""The stdlib WSGI server helper, on real sockets: threads, IPv6, quiet errors, bounded stop."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from lightd_sync._wsgi import StartResponse, WSGIEnvironment, WsgiServer, serve

from .conftest import LogCapture
from .servers import wait_until


def hello(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    body = json.dumps(
        {
            "thread": threading.current_thread().name,
            "multithread": environ["wsgi.multithread"],
            "path": environ["PATH_INFO"],
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


@pytest.fixture
def server() -> Iterator[WsgiServer]:
    with serve(hello) as srv:
        yield srv


def get(srv: WsgiServer, path: str = "/") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def raw(srv: WsgiServer, data: bytes, *, shut: bool = True) -> bytes:
    """Send *data* on a fresh connection and read the answer to its end."""
    with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def test_serves_on_a_free_port_with_named_daemon_threads(server: WsgiServer) -> None:
    assert server.host == "127.0.0.1"
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    status, body = get(server, "/x")
    doc = json.loads(body)
    assert status == 200
    assert doc["path"] == "/x"
    assert doc["multithread"] is True
    assert doc["thread"].startswith(f"lightd-sync-http-{server.port}-")
    serving = [t for t in threading.enumerate() if t.name == f"lightd-sync-wsgi-{server.port}"]
    assert len(serving) == 1
    assert serving[0].daemon


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        srv = serve(hello, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with srv:
        assert srv.host == "::1"
        assert srv.url == f"http://[::1]:{srv.port}"
        assert get(srv)[0] == 200


def test_stop_is_fast_idempotent_and_final() -> None:
    srv = serve(hello).start()
    started = time.monotonic()
    assert srv.stop() is True
    assert time.monotonic() - started < 1.0
    assert srv.stop() is True
    with pytest.raises(RuntimeError):
        srv.start()
    with pytest.raises(OSError), socket.create_connection((srv.host, srv.port), timeout=1):
        pass


def test_start_twice_is_refused(server: WsgiServer) -> None:
    with pytest.raises(RuntimeError):
        server.start()


def test_stop_without_start_closes_the_socket() -> None:
    srv = serve(hello)
    assert srv.stop() is True


def test_serve_forever_in_the_calling_thread() -> None:
    srv = serve(hello)
    thread = threading.Thread(target=srv.serve_forever, name="test-foreground")
    thread.start()
    try:
        assert get(srv)[0] == 200
    finally:
        assert srv.stop() is True
        thread.join(5)
    assert not thread.is_alive()


def test_many_clients_at_once(server: WsgiServer) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        status, _ = get(server)
        with lock:
            results.append(status)

    threads = [threading.Thread(target=client, name=f"test-client-{i}") for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [200] * 32


def test_stop_cuts_idle_connections_within_the_timeout() -> None:
    srv = serve(hello).start()
    with socket.create_connection((srv.host, srv.port), timeout=5) as idle:
        assert wait_until(lambda: len(srv._httpd.connection_threads()) == 1)
        started = time.monotonic()
        assert srv.stop(timeout=1.0) is True
        assert time.monotonic() - started < 2.0
        assert idle.recv(10) == b""


def test_stop_is_bounded_even_if_the_app_hangs() -> None:
    release = threading.Event()

    def stuck(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        release.wait(10)
        start_response("200 OK", [])
        return [b""]

    srv = serve(stuck).start()
    with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert wait_until(lambda: len(srv._httpd.connection_threads()) == 1)
        started = time.monotonic()
        assert srv.stop(timeout=0.3) is False
        assert time.monotonic() - started < 1.5
        release.set()
    assert wait_until(lambda: not srv._httpd.connection_threads())


def test_client_disconnects_are_silent(
    server: WsgiServer, capfd: pytest.CaptureFixture[str], logs: LogCapture
) -> None:
    # Connect and leave; leave mid request line; reset after a request.
    with socket.create_connection((server.host, server.port), timeout=5):
        pass
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"GET / HT")
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert get(server)[0] == 200
    assert wait_until(lambda: len(server._httpd.connection_threads()) == 0)
    out, err = capfd.readouterr()
    assert out == err == ""
    assert logs.messages() == []


def test_silent_clients_time_out() -> None:
    with serve(hello, request_timeout=0.2) as srv:
        with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
            started = time.monotonic()
            assert sock.recv(10) == b""  # the server gave up on us
            assert time.monotonic() - started < 3.0
        assert get(srv)[0] == 200


def test_http_errors_are_json(server: WsgiServer) -> None:
    answer = raw(server, b"GET / NOTHTTP/1.0\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400")
    assert json.loads(body) == {"success": False, "error": "400 Bad Request"}
    answer = raw(server, b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 414")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["success"] is False


def test_answer_survives_an_unread_body(server: WsgiServer) -> None:
    # The app never reads the body: the server must drain it after answering,
    # or closing would reset the connection and lose the answer.
    body = b"x" * 300_000
    head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
    answer = raw(server, head + body)
    assert answer.startswith(b"HTTP/1.0 200")


def test_an_app_exception_is_logged_not_printed(
    capfd: pytest.CaptureFixture[str], logs: LogCapture
) -> None:
    def broken(environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        raise RuntimeError("bug")

    with serve(broken) as srv:
        assert get(srv)[0] == 500
        assert get(srv)[0] == 500  # and it keeps serving
    assert capfd.readouterr().err == ""
    assert any("lightd_sync.wsgi" in m and "raised" in m for m in logs.messages())


def test_repr_and_context_manager() -> None:
    with contextlib.ExitStack() as stack:
        srv = stack.enter_context(serve(hello))
        assert "serving" in repr(srv)
    assert "stopped" in repr(srv)
