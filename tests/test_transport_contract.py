"""
The contract every HTTP-speaking transport keeps, run against each of them.

``http`` (urllib3) and ``requests`` share the protocol's wire rules
(``_transports/protocol.py``); these tests hold both to them against real
servers on 127.0.0.1. What only one transport does is tested in its own module.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Callable

import pytest

from lightd_sync import (
    AuthRejectedError,
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

from .conftest import TOKEN, http_config
from .servers import Reply, ScriptedRemote, SilentServer, refused_url, serving

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
    [(HttpTransport, "http"), (RequestsTransport, "http"), (RequestsTransport, "https")],
    ids=["http", "requests", "requests-tls-handshake"],
)
def test_close_wakes_a_request_blocked_on_a_silent_remote(
    silent: SilentServer, make: Make, scheme: str
) -> None:
    """Waiting for the answer, or in the TLS handshake: close() from another thread ends it."""
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
