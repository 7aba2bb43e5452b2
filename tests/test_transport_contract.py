"""
The contract every HTTP-speaking transport keeps, run against each of them.

``http`` (urllib3) and ``requests`` share the protocol's wire rules
(``_transports/protocol.py``); these tests hold both to them against real
servers on 127.0.0.1. What only one transport does is tested in its own module.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Callable

import pytest
import urllib3

from lightd_sync import (
    AuthRejectedError,
    DeliveryError,
    HttpTransport,
    Lifecycle,
    RemoteConfig,
    RemoteRejectedError,
    RemoteTimeoutError,
    RemoteUnreachableError,
    RequestsTransport,
    Status,
    SyncEngine,
    Transport,
    Update,
    __version__,
)

from .conftest import TOKEN, LogCapture, http_config
from .servers import RawRemote, Reply, ScriptedRemote, SilentServer, refused_url, serving

Make = Callable[[RemoteConfig], Transport]


@pytest.fixture(params=[HttpTransport, RequestsTransport], ids=["http", "requests"])
def make(request: pytest.FixtureRequest) -> Make:
    """Build a transport of each kind."""
    return request.param  # type: ignore[no-any-return]


def scripted(reply: Reply) -> Iterator[ScriptedRemote]:
    yield from serving(ScriptedRemote(lambda request: reply))


@pytest.fixture
def transport(remote: ScriptedRemote, make: Make) -> Iterator[Transport]:
    with make(http_config(remote.url + "/api")) as t:
        yield t


def test_post_update_sends_exact_body_and_headers(
    remote: ScriptedRemote, transport: Transport
) -> None:
    """One POST per update to {url}/update with the protocol's headers."""
    transport.send(Update("my-server-001", Status.INSTALLING))
    [req] = remote.posts()
    assert "/api/update" == req.path
    assert {"event": "update", "server": "my-server-001", "status": "installing"} == req.json()
    assert f"Bearer {TOKEN}" == req.headers["Authorization"]
    assert "application/json" == req.headers["Content-Type"]
    assert "application/json" == req.headers["Accept"]
    assert f"lightd-sync/{__version__}" == req.headers["User-Agent"]


EXPECTED_BODIES = {
    Lifecycle.STARTED: {"event": "update", "server": "s-1", "status": "installing"},
    Lifecycle.CREATING_CONTAINER: {"event": "update", "server": "s-1", "status": "installing"},
    Lifecycle.READY: {"event": "update", "server": "s-1", "status": "ready"},
    Lifecycle.ERROR: {
        "event": "update",
        "server": "s-1",
        "error": "failed",
        "data": "Docker container creation failed: image not found",
    },
    Lifecycle.REINSTALL_STARTED: {"event": "update", "server": "s-1", "status": "installing"},
}


@pytest.mark.parametrize("event", list(Lifecycle))
def test_every_lifecycle_event_sends_the_spec_body(
    remote: ScriptedRemote, event: Lifecycle, make: Make
) -> None:
    """Each Lightd lifecycle event goes out exactly as the spec's table says."""
    data = EXPECTED_BODIES[event].get("data")
    name = make.name  # type: ignore[attr-defined]  # the class's registry name
    with SyncEngine(http_config(remote.url, transport=name)) as engine:
        assert engine.lifecycle("s-1", event, data)
        assert engine.flush(5)
    [req] = remote.posts()
    assert EXPECTED_BODIES[event] == req.json()
    assert f"Bearer {TOKEN}" == req.headers["Authorization"]


def test_health_is_a_get_with_the_token(remote: ScriptedRemote, transport: Transport) -> None:
    transport.check_health()
    [req] = remote.requests
    assert ("GET", "/api/health") == (req.method, req.path)
    assert f"Bearer {TOKEN}" == req.headers["Authorization"]
    assert "Content-Type" not in req.headers


def test_refused_port_is_unreachable(make: Make) -> None:
    with make(http_config(refused_url())) as t:
        with pytest.raises(RemoteUnreachableError, match="cannot connect") as info:
            t.send(Update("s", "ready"))
    assert info.value.retryable
    assert info.value.status is None


def test_silent_server_times_out(silent: SilentServer, make: Make) -> None:
    started = time.monotonic()
    with make(http_config(silent.url, timeout=0.3)) as t:
        with pytest.raises(RemoteTimeoutError, match=r"no answer within 0.3 s"):
            t.send(Update("s", "ready"))
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("status", [401, 403])
def test_auth_rejected_hints_at_the_tokens(status: int, make: Make) -> None:
    for server in scripted(Reply(status=status, body=b'{"success": false}')):
        with make(http_config(server.url)) as t:
            with pytest.raises(AuthRejectedError, match="tokens match on both sides") as info:
                t.send(Update("s", "ready"))
            with pytest.raises(AuthRejectedError):
                t.check_health()
        assert status == info.value.status
        assert not info.value.retryable


@pytest.mark.parametrize(
    ("reply", "match", "retryable"),
    [
        (Reply(status=500, body=b'{"success": false, "error": "db down"}'), "500: db down", False),
        (Reply(status=503, headers=(("Retry-After", "7"),)), "HTTP 503", True),
        (Reply(body=b'{"success": false}'), '"success": false', False),
        (Reply(body=b"<html>hello</html>"), "not valid JSON", False),
        (Reply(body=b"[1, 2]"), "not an object", False),
        (
            Reply(status=302, headers=(("Location", "http://elsewhere.invalid/"),)),
            "redirect",
            False,
        ),
    ],
)
def test_rejections(reply: Reply, match: str, retryable: bool, make: Make) -> None:
    for server in scripted(reply):
        with make(http_config(server.url)) as t:
            with pytest.raises(RemoteRejectedError, match=match) as info:
                t.send(Update("s", "ready"))
        assert reply.status == info.value.status
        assert retryable == info.value.retryable
        if reply.status == 503:
            assert 7.0 == info.value.retry_after
        assert 1 == len(server.posts()), "a redirect is never followed, nothing is retried"


@pytest.mark.parametrize("body", [b"", b'{"success": true}', b'{"success": true, "id": 3}'])
def test_accepted_answers(body: bytes, make: Make) -> None:
    for server in scripted(Reply(body=body)):
        with make(http_config(server.url)) as t:
            t.send(Update("s", "ready"))


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body=b"{}"),
        Reply(body=b'{"endpoint": "inactive"}'),
        Reply(status=500),
        Reply(body=b"x"),
    ],
)
def test_unhealthy_answers(reply: Reply, make: Make) -> None:
    for server in scripted(reply):
        with make(http_config(server.url)) as t, pytest.raises(RemoteRejectedError):
            t.check_health()


def test_a_remote_echoing_the_token_never_leaks_it(make: Make) -> None:
    body = ('{"success": false, "error": "bad token Bearer ' + TOKEN + '"}').encode()
    for server in scripted(Reply(status=500, body=body)):
        with make(http_config(server.url)) as t:
            with pytest.raises(RemoteRejectedError) as info:
                t.send(Update("s", "ready"))
    assert TOKEN not in str(info.value)
    assert "<token>" in str(info.value)


def test_repr_has_no_token(transport: Transport) -> None:
    assert TOKEN not in repr(transport)


@pytest.mark.parametrize(
    ("make", "scheme"),
    [
        (HttpTransport, "http"),
        (HttpTransport, "https"),
        (RequestsTransport, "http"),
        (RequestsTransport, "https"),
    ],
    ids=["http", "http-tls-handshake", "requests", "requests-tls-handshake"],
)
def test_close_wakes_a_request_blocked_on_a_silent_remote(
    silent: SilentServer, make: Make, scheme: str
) -> None:
    """Waiting for the answer, or in the TLS handshake: close() from another thread ends it."""
    if scheme == "https" and make is RequestsTransport and urllib3.__version__.startswith("1."):
        pytest.xfail("urllib3 1.26 stores the socket only after the handshake (docs/transports.md)")
    t = make(http_config(silent.url.replace("http", scheme, 1), timeout=30))
    errors: list[BaseException] = []

    def send() -> None:
        try:
            t.send(Update("s", "ready"))
        except BaseException as exc:
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    assert silent.accepted.acquire(timeout=5)
    started = time.monotonic()
    t.close()
    sender.join(5)
    assert not sender.is_alive()
    assert time.monotonic() - started < 2
    [err] = errors
    assert isinstance(err, RemoteUnreachableError)
    assert "closed" in str(err)
    with pytest.raises(RemoteUnreachableError, match="the transport is closed"):
        t.send(Update("s", "ready"))


# -- one deadline per request, answers of bounded size (issue 10) ------------------------


def _raw(script: Callable[[socket.socket, bytes], None]) -> Iterator[RawRemote]:
    yield from serving(RawRemote(script))


def _trickle(prefix: bytes) -> Callable[[socket.socket, bytes], None]:
    """Send *prefix*, then one byte every 0.05 s for as long as the client listens."""

    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(prefix)
        for _ in range(400):
            time.sleep(0.05)
            conn.sendall(b"x-a: b\r\n"[:1])

    return script


@pytest.mark.parametrize(
    "prefix",
    [b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"],
    ids=["headers", "body"],
)
@pytest.mark.parametrize("call", ["send", "check_health"])
def test_a_trickling_answer_is_cut_off_at_the_timeout(make: Make, prefix: bytes, call: str) -> None:
    """timeout bounds the whole request: a byte every 0.05 s does not hold a lane past it."""
    for server in _raw(_trickle(prefix)):
        with make(http_config(server.url, timeout=0.25)) as t:
            request = (
                t.check_health if call == "check_health" else lambda: t.send(Update("s", "ready"))
            )
            started = time.monotonic()
            with pytest.raises(RemoteTimeoutError, match=r"no answer within 0\.25 s") as info:
                request()
            elapsed = time.monotonic() - started
    assert elapsed <= 0.55
    assert "timeout" == info.value.reason
    assert info.value.retryable


def _huge(kind: str) -> Callable[[socket.socket, bytes], None]:
    def script(conn: socket.socket, request: bytes) -> None:
        if kind == "declared":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n" + b"{" * 65536)
            return
        head = b"Transfer-Encoding: chunked\r\n" if kind == "chunked" else b"Connection: close\r\n"
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n")
        block = b" " * 65536
        for _ in range(1000):  # 64 MiB, unless the client stops reading first
            conn.sendall(b"10000\r\n" + block + b"\r\n" if kind == "chunked" else block)

    return script


@pytest.mark.parametrize("kind", ["declared", "chunked", "close-delimited"])
def test_an_answer_larger_than_64_kib_is_a_failed_delivery(make: Make, kind: str) -> None:
    for server in _raw(_huge(kind)):
        with make(http_config(server.url, timeout=5)) as t:
            with pytest.raises(RemoteRejectedError, match="larger than 64 KiB") as info:
                t.send(Update("s", "ready"))
    assert "too_large" == info.value.reason
    assert 200 == info.value.status
    assert not info.value.retryable


def test_an_answer_of_64_kib_is_read(make: Make) -> None:
    body = b'{"success": true}' + b" " * (64 * 1024 - 17)
    for server in scripted(Reply(body=body)):
        with make(http_config(server.url)) as t:
            t.send(Update("s", "ready"))


# -- the token never leaks, whatever the remote sends back -------------------------------


def _echo_token(conn: socket.socket, request: bytes) -> None:
    conn.sendall(
        (
            f"HTTP/1.1 302 Found {TOKEN}\r\nLocation: http://127.0.0.1/{TOKEN}\r\n"
            f"X-Echo: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f'Content-Length: {len(TOKEN) + 40}\r\n\r\n{{"success": false, "error": "{TOKEN}"    }}'
        ).encode()
    )


def _bad_status_line(conn: socket.socket, request: bytes) -> None:
    conn.sendall(f"HTTQ/9 {TOKEN}\r\n\r\n".encode())


def _everything_shown(exc: BaseException) -> str:
    shown = [repr(exc), str(exc), str(exc.__cause__), str(exc.__context__)]
    shown += traceback.format_exception(type(exc), exc, exc.__traceback__)
    shown += [repr(arg) for arg in exc.args]
    return "".join(shown)


@pytest.mark.parametrize("script", [_echo_token, _bad_status_line], ids=["echo", "garbage"])
def test_a_remote_echoing_the_token_everywhere_never_leaks_it(
    make: Make, script: Callable[[socket.socket, bytes], None]
) -> None:
    for server in _raw(script):
        with make(http_config(server.url)) as t:
            for call in (lambda: t.send(Update("s", "ready")), t.check_health):
                with pytest.raises(DeliveryError) as info:
                    call()
                assert TOKEN not in _everything_shown(info.value)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:{port}/статус", "http://127.0.0.1:{port}/caf\u00e9/\u2603"],
)
def test_a_non_ascii_url_is_sent_percent_encoded(make: Make, url: str) -> None:
    for server in serving(ScriptedRemote()):
        with make(http_config(url.format(port=server.port))) as t:
            t.send(Update("s", "ready"))
        [post] = server.posts()
    assert post.path.isascii()
    assert post.path.endswith("/update")


def test_an_unresolvable_non_ascii_host_fails_without_the_token(make: Make) -> None:
    with make(http_config("http://bücher.invalid:9/api", timeout=2)) as t:
        with pytest.raises(DeliveryError) as info:
            t.send(Update("s", "ready"))
    assert TOKEN not in _everything_shown(info.value)
    assert not isinstance(info.value.__context__, UnicodeError)


# -- the proxy that is not on this machine ----------------------------------------------


@pytest.mark.parametrize("remote_url", ["http://127.0.0.1:9/api", "http://sync.example.org"])
def test_plain_http_through_a_proxy_elsewhere_warns_at_creation(
    make: Make, remote_url: str, logs: LogCapture
) -> None:
    make(http_config(remote_url, proxy="http://proxy.example.org:3128")).close()
    [warning] = logs.messages(logging.WARNING)
    assert "through the proxy http://proxy.example.org:3128 on another machine" in warning
    assert "unencrypted" in warning


def test_plain_http_through_a_loopback_proxy_is_quiet(make: Make, logs: LogCapture) -> None:
    make(http_config("http://127.0.0.1:9/api", proxy="http://127.0.0.1:3128")).close()
    assert not logs.messages(logging.WARNING)
