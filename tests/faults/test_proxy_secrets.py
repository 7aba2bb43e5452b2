"""
The proxy's password never shows, whichever HTTP transport runs (issue 23).

An https:// remote behind a CONNECT proxy ``http://acc:<password>@127.0.0.1:PORT``:
a proxy that tunnels, one that refuses (407), one that answers garbage, one
that hangs. The password, its percent-decoded form and the Base64
``Proxy-Authorization`` value never appear in an error (message, args,
attributes, chain), a log line at any level, a ``repr`` or the health state.
"""

from __future__ import annotations

import base64
import gc
import socket
import sys
import time
from collections.abc import Iterator
from typing import Callable

import pytest
import urllib3

from lightd_sync import (
    DeliveryError,
    HttpTransport,
    RemoteConfig,
    RequestsTransport,
    SyncEngine,
    Transport,
    Update,
)
from lightd_sync._transports._errors import causes

from ..conftest import TOKEN, LogCapture
from ..servers import RawRemote, serving
from .harness import fault_config
from .servers import FaultServer, ForwardProxy

pytestmark = [pytest.mark.timeout(30)]
if sys.version_info < (3, 12) and urllib3.__version__.startswith("1."):
    # http.client before 3.12 never closes the answer it read from a proxy that
    # refused the tunnel; with urllib3 1.26 (which leaves CONNECT to http.client)
    # its socket is garbage-collected unclosed: CPython's leak, not ours.
    pytestmark.append(pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"))

    @pytest.fixture(autouse=True)
    def collect_the_leak() -> Iterator[None]:
        """Collect that socket inside the test, under its filter, not at the session's end."""
        yield
        gc.collect()


Make = Callable[[RemoteConfig], Transport]
PASSWORD = "pr0xy%2Fpa55w0rd"  # percent-encoded in the URL: "pr0xy/pa55w0rd"
DECODED = "pr0xy/pa55w0rd"
HEADER = base64.b64encode(f"acc:{DECODED}".encode()).decode()
LEAKS = (PASSWORD, DECODED, HEADER, HEADER.rstrip("="), TOKEN)


@pytest.fixture(params=[HttpTransport, RequestsTransport], ids=["http", "requests"])
def make(request: pytest.FixtureRequest) -> Make:
    return request.param  # type: ignore[no-any-return]


def proxy_url(port: int) -> str:
    return f"http://acc:{PASSWORD}@127.0.0.1:{port}"


def shown(exc: BaseException) -> str:
    parts: list[str] = []
    for e in causes(exc):
        parts += [str(e), repr(e), *(repr(a) for a in e.args)]
        for value in vars(e).values():
            parts.append(value.decode("latin-1") if isinstance(value, bytes) else repr(value))
    return "\n".join(parts)


def assert_clean(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, f"{leak!r} shown in: {text[:600]}"


def _echo(first_line: bytes) -> Callable[[socket.socket, bytes], None]:
    """A proxy that answers with *first_line* and a body echoing everything it was sent."""

    def script(conn: socket.socket, request: bytes) -> None:
        body = request + b" " + PASSWORD.encode() + b" " + DECODED.encode()
        head = first_line.replace(b"{pw}", DECODED.encode()).replace(b"{h}", HEADER.encode())
        conn.sendall(head + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    return script


def _garbage(conn: socket.socket, request: bytes) -> None:
    conn.sendall(b"garbage " + HEADER.encode() + b" " + DECODED.encode() + b"\r\n\r\n")


def _hang(stopped: Callable[[], bool]) -> Callable[[socket.socket, bytes], None]:
    def script(conn: socket.socket, request: bytes) -> None:
        while not stopped():
            time.sleep(0.05)

    return script


def proxies() -> dict[str, Callable[[RawRemote], Callable[[socket.socket, bytes], None]]]:
    return {
        "refuses-407": lambda s: _echo(
            b"HTTP/1.1 407 Who is {pw} {h}\r\nProxy-Authenticate: Basic realm={pw}"
        ),
        "garbage": lambda s: _garbage,
        "hangs": lambda s: _hang(s.stopped.is_set),
    }


@pytest.mark.parametrize("kind", sorted(proxies()))
@pytest.mark.parametrize("call", ["send", "check_health"])
def test_a_failing_proxy_never_shows_the_password(  # noqa: PLR0917 (fixtures)
    make: Make, tls_remote: FaultServer, ca_bundle: str, logs: LogCapture, kind: str, call: str
) -> None:
    server = RawRemote(lambda conn, req: None)
    server.script = proxies()[kind](server)
    for proxy in serving(server):
        config = fault_config(  # the proxy that hangs holds the request for the whole timeout
            tls_remote.url, proxy=proxy_url(proxy.port), ca_bundle=ca_bundle, timeout=0.3
        )
        with make(config) as t:
            assert_clean(repr(t))
            with pytest.raises(DeliveryError) as info:
                t.check_health() if call == "check_health" else t.send(Update("s", "ready"))
    assert_clean(shown(info.value))
    assert_clean(logs.text())
    assert not tls_remote.posts()


def test_a_tunnelling_proxy_carries_the_updates_and_the_password_never_shows(
    make: Make,
    tls_remote: FaultServer,
    ca_bundle: str,
    logs: LogCapture,
) -> None:
    for proxy in serving(ForwardProxy()):
        config = fault_config(
            tls_remote.url, proxy=proxy_url(proxy.port), ca_bundle=ca_bundle, timeout=5
        )
        with make(config) as t:
            t.send(Update("s", "ready"))
            t.check_health()
            assert_clean(repr(t))
        assert {f"Basic {HEADER}"} == {p.proxy_authorization for p in proxy.seen()}
    assert 1 == len(tls_remote.posts())
    assert "Proxy-Authorization" not in tls_remote.posts()[0].headers
    assert_clean(logs.text())
    assert "reaching" in logs.text()


def test_the_health_state_never_shows_the_password(
    make: Make, tls_remote: FaultServer, ca_bundle: str, logs: LogCapture
) -> None:
    """HealthState.error (and so the local API's /remote/health) of an engine behind a 407."""
    server = RawRemote(_echo(b"HTTP/1.1 407 Who is {pw} {h}"))
    for proxy in serving(server):
        kind = "http" if make is HttpTransport else "requests"
        config = fault_config(
            tls_remote.url,
            proxy=proxy_url(proxy.port),
            ca_bundle=ca_bundle,
            timeout=1,
            transport=kind,
            health_interval=60,
        )
        with SyncEngine(config) as engine:
            state = engine.check_health()
    assert state.healthy is False
    assert state.error is not None and "407" in state.error
    assert_clean(state.error)
    assert_clean(repr(state))
    assert_clean(logs.text())
