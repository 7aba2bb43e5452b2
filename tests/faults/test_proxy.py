"""Proxies: ``remote.proxy``, ``HTTP_PROXY``/``HTTPS_PROXY`` and ``NO_PROXY``, plain and CONNECT."""

from __future__ import annotations

import base64
import logging
import threading
import time
from typing import Any

import pytest

from lightd_sync import HttpTransport, RemoteUnreachableError, SyncEngine, Update

from ..conftest import TOKEN, LogCapture
from ..servers import refused_url
from .conftest import Fault
from .harness import check_latency, fault_config, ride_out
from .servers import FaultServer, ForwardProxy, Hang

pytestmark = pytest.mark.timeout(20)


def deliver_one(url: str, **kw: Any) -> HttpTransport:
    """Send one update and check health; a healthy path, so a generous timeout."""
    transport = HttpTransport(fault_config(url, **{"timeout": 5, **kw}))
    with transport:
        transport.send(Update("s-1", "ready"))
        transport.check_health()
        assert 1 == len(transport._guard.connections()), "tracked, and kept alive"
    return transport


def test_config_proxy_carries_absolute_form_requests(
    healthy_remote: FaultServer, proxy: ForwardProxy
) -> None:
    deliver_one(healthy_remote.url + "/api", proxy=proxy.url)
    assert [
        ("POST", f"{healthy_remote.url}/api/update"),
        ("GET", f"{healthy_remote.url}/api/health"),
    ] == [(p.method, p.target) for p in proxy.seen()]
    assert {"s-1": {"event": "update", "server": "s-1", "status": "ready"}} == (
        healthy_remote.latest()
    )
    [post] = healthy_remote.posts()
    assert f"Bearer {TOKEN}" == post.headers["Authorization"]


@pytest.mark.parametrize("kind", ["http", "requests"])
def test_requests_on_a_kept_alive_proxy_connection_never_wait_for_a_delayed_ack(
    kind: str, healthy_remote: FaultServer, proxy: ForwardProxy
) -> None:
    # urllib3 turns Nagle's algorithm on towards a proxy: with it, each request
    # after the first (headers and body are two writes) waits for the proxy's
    # delayed ACK, 40 ms on Linux: 30 requests would take 1.2 s, not 0.1 s.
    config = fault_config(healthy_remote.url, proxy=proxy.url, timeout=5)
    if kind == "requests":
        from lightd_sync import RequestsTransport

        transport: Any = RequestsTransport(config)
    else:
        transport = HttpTransport(config)
    with transport:
        transport.send(Update("s-0", "ready"))  # connected
        started = time.monotonic()
        for i in range(30):
            transport.send(Update(f"s-{i}", "ready"))
        took = time.monotonic() - started
    assert len(healthy_remote.posts()) == 31
    assert took < 0.6, f"30 requests through the proxy took {took:.2f} s"


@pytest.mark.parametrize("var", ["HTTP_PROXY", "http_proxy"])
def test_http_proxy_from_the_environment(
    var: str, healthy_remote: FaultServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(var, proxy.url)
    transport = deliver_one(healthy_remote.url)
    assert transport.proxy is not None
    assert var == transport.proxy.source
    assert 2 == len(proxy.seen())
    assert 1 == len(healthy_remote.posts())


@pytest.mark.parametrize(
    ("no_proxy", "proxied"),
    [("127.0.0.1", False), ("localhost,127.0.0.1:1", False), ("*", False), ("example.org", True)],
)
def test_no_proxy_is_honoured(
    no_proxy: str,
    proxied: bool,
    healthy_remote: FaultServer,
    proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy.replace(":1", f":{healthy_remote.port}"))
    deliver_one(healthy_remote.url)
    assert proxied == bool(proxy.seen())
    assert 1 == len(healthy_remote.posts())


def test_config_proxy_overrides_the_environment(
    healthy_remote: FaultServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", refused_url())
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    transport = deliver_one(healthy_remote.url, proxy=proxy.url)
    assert transport.proxy is not None
    assert "remote.proxy" == transport.proxy.source
    assert 2 == len(proxy.seen())


def test_https_remote_goes_through_a_connect_tunnel(
    tls_remote: FaultServer, proxy: ForwardProxy, ca_bundle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS runs end to end inside CONNECT: the proxy sees no path, no token."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("HTTP_PROXY", refused_url())  # the wrong variable for an https remote
    transport = HttpTransport(fault_config(tls_remote.url, ca_bundle=ca_bundle, timeout=5))
    with transport:
        for _ in range(3):
            transport.send(Update("s-1", "ready"))
        assert 1 == len(transport._guard.connections()), "one tunnel, kept alive"
    [tunnel] = proxy.seen()
    assert ("CONNECT", f"127.0.0.1:{tls_remote.port}") == (tunnel.method, tunnel.target)
    assert 3 == len(tls_remote.posts())


def test_proxy_credentials_are_sent_and_never_shown(
    healthy_remote: FaultServer,
    proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
    logs: LogCapture,
) -> None:
    secret = "s3cr%40t"  # percent-encoded in the URL: "s3cr@t"
    monkeypatch.setenv("HTTP_PROXY", f"http://proxyuser:{secret}@127.0.0.1:{proxy.port}")
    transport = deliver_one(healthy_remote.url)
    expected = "Basic " + base64.b64encode(b"proxyuser:s3cr@t").decode()
    assert {expected} == {p.proxy_authorization for p in proxy.seen()}
    assert "Proxy-Authorization" not in healthy_remote.posts()[0].headers
    shown = f"{transport!r} {transport.proxy} {logs.text()}"
    for leak in (secret, "s3cr@t", "proxyuser", expected):
        assert leak not in shown
    assert f"through the proxy http://127.0.0.1:{proxy.port}" in logs.text()


def test_an_unusable_environment_proxy_is_logged_and_skipped(
    healthy_remote: FaultServer, monkeypatch: pytest.MonkeyPatch, logs: LogCapture
) -> None:
    monkeypatch.setenv("http_proxy", "socks5://user:pw@127.0.0.1:1080")
    transport = deliver_one(healthy_remote.url)
    assert transport.proxy is None
    [warning] = logs.messages(logging.WARNING)
    assert "http_proxy is not an http:// or https:// proxy URL" in warning
    assert "pw" not in warning


def test_a_dead_proxy_is_unreachable(healthy_remote: FaultServer) -> None:
    dead = refused_url()
    with HttpTransport(fault_config(healthy_remote.url, proxy=dead)) as transport:
        with pytest.raises(RemoteUnreachableError, match="proxy") as info:
            transport.send(Update("s-1", "ready"))
    assert info.value.retryable


def test_close_wakes_a_request_stuck_on_a_silent_proxy(healthy_remote: FaultServer) -> None:
    """close() cuts connections to the proxy as it does direct ones."""
    stuck = FaultServer(Hang())
    transport = HttpTransport(fault_config(healthy_remote.url, proxy=stuck.url, timeout=30))
    errors: list[BaseException] = []

    def send() -> None:
        try:
            transport.send(Update("s-1", "ready"))
        except RemoteUnreachableError as exc:
            errors.append(exc)

    sender = threading.Thread(target=send)
    try:
        sender.start()
        assert stuck.wait_for(lambda s: bool(s.requests))
        started = time.monotonic()
        transport.close()
        sender.join(5)
        assert time.monotonic() - started < 2
        assert not sender.is_alive()
    finally:
        transport.close()
        stuck.stop()
    [error] = errors
    assert "closed" in str(error)


@pytest.fixture
def behind_proxy(proxy: ForwardProxy, refused: Fault) -> Fault:
    """The remote is down behind a working proxy (which answers 502)."""
    return Fault("remote down behind the proxy", refused.server, refused.end)


def test_engine_rides_out_a_remote_down_behind_the_proxy(
    behind_proxy: Fault, proxy: ForwardProxy, logs: LogCapture
) -> None:
    engine = SyncEngine(fault_config(behind_proxy.server.url, proxy=proxy.url))
    outcome = ride_out(engine, behind_proxy, logs)
    check_latency(outcome, behind_proxy.name)
    assert any("HTTP 502" in m for m in logs.messages(logging.ERROR))
    assert all(p.target.startswith(behind_proxy.server.url) for p in proxy.seen())
