"""
Fixtures of the fault-injection suite: one misbehaving remote per fault, on 127.0.0.1.

Each fault fixture yields a :class:`Fault`: the server, running in its faulty
mode from the start, and ``end()``, which makes it healthy again.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import attrs
import pytest
import trustme

from ..servers import Reply, refused_url, serving
from .servers import (
    CutAfterHeaders,
    FaultServer,
    ForwardProxy,
    Hang,
    Healthy,
    Mode,
    Respond,
    Slow,
)

#: The engine's request timeout in this suite; faults that stall go well beyond it.
TIMEOUT = 0.2
#: How long the "down" and "up" phases of the flapping remote last.
FLAP = 0.12

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "REQUEST_METHOD")


@attrs.frozen
class Fault:
    """A remote in a faulty state, and how to end the fault."""

    name: str
    server: FaultServer
    end: Callable[[], None]


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own proxy settings must not reroute the suite's 127.0.0.1 traffic."""
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def _healthy_again(server: FaultServer) -> Callable[[], None]:
    def end() -> None:
        server.mode = Healthy()

    return end


def _mode_fault(name: str, mode: Mode) -> Iterator[Fault]:
    for server in serving(FaultServer(mode)):
        yield Fault(name, server, _healthy_again(server))


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture
def refused() -> Iterator[Fault]:
    """Nothing listens on the port (until the fault ends)."""
    for server in serving(FaultServer(refusing=True, port=_port(refused_url()))):
        yield Fault("refused", server, server.listen)


@pytest.fixture
def never_answers() -> Iterator[Fault]:
    """Accepts connections, reads requests and never answers."""
    yield from _mode_fault("never answers", Hang())


@pytest.fixture
def slow() -> Iterator[Fault]:
    """Answers correctly, but only after 2.5 times the engine's timeout."""
    yield from _mode_fault("slow", Slow(TIMEOUT * 2.5))


def _status(status: int, *headers: tuple[str, str]) -> Reply:
    return Reply(
        status=status,
        body=b'{"success": false, "error": "injected"}',
        headers=(("Content-Type", "application/json"), *headers),
    )


@pytest.fixture
def status_500() -> Iterator[Fault]:
    yield from _mode_fault("500", Respond(_status(500)))


@pytest.fixture
def status_502() -> Iterator[Fault]:
    yield from _mode_fault("502", Respond(_status(502)))


@pytest.fixture
def status_503() -> Iterator[Fault]:
    """503 with ``Retry-After: 1``: the lanes hold back for a second."""
    yield from _mode_fault("503", Respond(_status(503, ("Retry-After", "1"))))


@pytest.fixture
def status_429() -> Iterator[Fault]:
    """429 with ``Retry-After: 1``: the lanes hold back for a second."""
    yield from _mode_fault("429", Respond(_status(429, ("Retry-After", "1"))))


@pytest.fixture
def status_401() -> Iterator[Fault]:
    """The remote rejects the token (until it is given the right one)."""
    yield from _mode_fault("401", Respond(_status(401)))


@pytest.fixture
def cut() -> Iterator[Fault]:
    """Sends the headers and a few bytes of the body, then closes the connection."""
    yield from _mode_fault("cut", CutAfterHeaders())


@pytest.fixture
def garbage() -> Iterator[Fault]:
    """Answers 200 with a body that is not JSON."""
    page = b"<html><body>Welcome to nginx!</body></html>"
    yield from _mode_fault("garbage", Respond(Reply(body=page, headers=())))


@pytest.fixture
def flapping() -> Iterator[Fault]:
    """Down (refusing, open connections cut) and up, in turns, until the fault ends."""
    for server in serving(FaultServer()):
        server.flap(down=FLAP, up=FLAP)
        yield Fault("flapping", server, server.stop_flapping)


# -- TLS ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """The test CA the engine is told to trust (through ``ca_bundle``)."""
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_bundle(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_tls(ca: trustme.CA, host: str = "127.0.0.1") -> ssl.SSLContext:
    """A server-side TLS context with a certificate for *host* signed by *ca*."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def client_pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A client certificate and its key (one PEM file), signed by the test CA."""
    path = tmp_path_factory.mktemp("tls") / "client.pem"
    ca.issue_cert("client.example").private_key_and_cert_chain_pem.write_to_path(str(path))
    return path


def _swap_certificate(server: FaultServer, ca: trustme.CA) -> Callable[[], None]:
    """The fix: the remote gets a certificate for its own name from the trusted CA."""

    def end() -> None:
        server.tls = server_tls(ca)

    return end


@pytest.fixture
def tls_remote(ca: trustme.CA) -> Iterator[FaultServer]:
    """A healthy HTTPS remote whose certificate the test CA signed."""
    yield from serving(FaultServer(tls=server_tls(ca)))


@pytest.fixture
def untrusted_tls(ca: trustme.CA) -> Iterator[Fault]:
    """An HTTPS remote with a certificate from a CA the engine does not trust, until fixed."""
    for server in serving(FaultServer(tls=server_tls(trustme.CA()))):
        yield Fault("untrusted certificate", server, _swap_certificate(server, ca))


@pytest.fixture
def wrong_host_tls(ca: trustme.CA) -> Iterator[Fault]:
    """An HTTPS remote whose (trusted) certificate names another host, until fixed."""
    for server in serving(FaultServer(tls=server_tls(ca, "wrong.example"))):
        yield Fault("wrong host name", server, _swap_certificate(server, ca))


# -- the proxy ---------------------------------------------------------------------


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    """A forward proxy: absolute-form requests and CONNECT tunnels."""
    yield from serving(ForwardProxy())


@pytest.fixture
def healthy_remote() -> Iterator[FaultServer]:
    """A healthy plain-HTTP remote."""
    yield from serving(FaultServer())
