"""RequestsTransport: the urllib3 transport's cases against real servers, then ``responses``."""

from __future__ import annotations

import json
import logging
import os
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
import trustme

from lightd_sync import (
    ConfigError,
    RemoteConfig,
    RemoteTimeoutError,
    RemoteUnreachableError,
    SyncEngine,
    Update,
)
from lightd_sync._transports.requests_transport import RequestsTransport

from .conftest import TOKEN, LogCapture, http_config
from .servers import Reply, ScriptedRemote, serving

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests trusts the environment: the machine's proxies must not reroute 127.0.0.1."""
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def scripted(reply: Reply) -> Iterator[ScriptedRemote]:
    yield from serving(ScriptedRemote(lambda request: reply))


@pytest.fixture
def transport(remote: ScriptedRemote) -> Iterator[RequestsTransport]:
    with RequestsTransport(http_config(remote.url + "/api")) as t:
        yield t


# -- the cases of test_http_transport.py -------------------------------------------


def test_keep_alive_reuses_connections(
    remote: ScriptedRemote, transport: RequestsTransport
) -> None:
    for _ in range(20):
        transport.send(Update("s", "ready"))
    assert 20 == len(remote.posts())
    assert 1 == len(transport._guard.connections())


def _local_ports(t: RequestsTransport) -> set[int]:
    return {c.sock.getsockname()[1] for c in t._guard.connections()}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # 3.12+: threads are running
def test_a_forked_child_gets_a_session_of_its_own(remote: ScriptedRemote) -> None:
    with RequestsTransport(http_config(remote.url)) as t:
        t.send(Update("parent", "installing"))
        parent_session, parent_ports = t.session, _local_ports(t)
        assert 1 == len(parent_ports)
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code only
            code = 1
            try:
                t.send(Update("child", "ready"))
                code = 0 if _local_ports(t).isdisjoint(parent_ports) else 2
                code = code or (0 if t.session is not parent_session else 3)
                t.close()  # must not shut down the parent's socket
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert 0 == os.waitstatus_to_exitcode(status)
        t.send(Update("parent", "ready"))
        assert parent_ports == _local_ports(t), "the parent's connection is intact and reused"
        assert parent_session is t.session
    assert {"parent", "child"} == {r.json()["server"] for r in remote.posts()}


def test_repr_says_whose_session(transport: RequestsTransport) -> None:
    assert "session=own" in repr(transport)


# -- a session of the daemon's ---------------------------------------------------------


def test_a_given_session_is_used_and_left_as_it_was(remote: ScriptedRemote) -> None:
    with requests.Session() as session:
        session.headers["X-Daemon"] = "my-daemon"
        headers_before = dict(session.headers)
        adapters_before = dict(session.adapters)
        with RequestsTransport(http_config(remote.url), session=session) as t:
            assert session is t.session
            assert "session=given" in repr(t)
            t.send(Update("s", "ready"))
        assert headers_before == dict(session.headers)
        assert adapters_before == session.adapters
        # close() left the daemon's session open and working.
        assert 200 == session.get(remote.url + "/health").status_code
    [post] = remote.posts()
    assert "my-daemon" == post.headers["X-Daemon"]


def test_the_sessions_auth_and_netrc_never_replace_the_token(
    remote: ScriptedRemote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with requests.Session() as session:
        with RequestsTransport(http_config(remote.url)) as own:
            own.send(Update("s", "ready"))
        session.auth = ("daemon", "password")
        with RequestsTransport(http_config(remote.url), session=session) as given:
            given.send(Update("s", "ready"))
    assert [f"Bearer {TOKEN}"] * 2 == [r.headers["Authorization"] for r in remote.posts()]


def test_a_given_session_must_be_a_session() -> None:
    with pytest.raises(TypeError, match=r"requests\.Session, not dict"):
        RequestsTransport(http_config("http://127.0.0.1:1"), session={})  # type: ignore[arg-type]


def test_requests_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "requests", None)
    with pytest.raises(ConfigError) as info:
        RequestsTransport(http_config("http://127.0.0.1:1"))
    assert "remote.transport: 'requests' needs `pip install lightd-sync[requests]`" == str(
        info.value
    )


def test_url_and_token_are_required() -> None:
    with pytest.raises(ConfigError, match=r"remote\.url: missing"):
        RequestsTransport(RemoteConfig(enabled=True, transport="requests", token=TOKEN))


def test_selected_by_name(remote: ScriptedRemote) -> None:
    with SyncEngine(http_config(remote.url, transport="requests")) as engine:
        assert isinstance(engine.transport, RequestsTransport)
        engine.update("s", "ready")
        assert engine.flush(5)
    assert 1 == len(remote.posts())


# -- TLS and proxies ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_remote(ca: trustme.CA, *, client_ca: bool = False) -> Iterator[ScriptedRemote]:
    """A ScriptedRemote speaking HTTPS with a certificate of *ca* (asking for a client's too)."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    if client_ca:
        server_ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(server_ctx)
    remote = ScriptedRemote()
    remote.server.socket = server_ctx.wrap_socket(remote.server.socket, server_side=True)
    remote.url = f"https://127.0.0.1:{remote.port}"
    yield from serving(remote)


def test_ca_bundle_is_trusted(ca: trustme.CA, tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    for server in tls_remote(ca):
        with RequestsTransport(http_config(server.url, ca_bundle=str(bundle))) as t:
            t.send(Update("s", "ready"))
            t.check_health()
        assert 1 == len(server.posts())


def test_an_unknown_ca_fails_with_a_hint(ca: trustme.CA) -> None:
    for server in tls_remote(ca):
        with RequestsTransport(http_config(server.url)) as t:
            with pytest.raises(RemoteUnreachableError, match="TLS failed") as info:
                t.send(Update("s", "ready"))
        assert "set remote.ca_bundle" in str(info.value)
        assert [] == server.posts()


def test_verify_false_is_loud_once_and_quiet_per_request(ca: trustme.CA, logs: LogCapture) -> None:
    for server in tls_remote(ca):
        with RequestsTransport(http_config(server.url, verify=False)) as t:
            for _ in range(3):  # an InsecureRequestWarning would be an error here
                t.send(Update("s", "ready"))
    [warning] = logs.messages(logging.WARNING)
    assert "TLS CERTIFICATE VERIFICATION IS OFF" in warning


def test_client_certificate_for_mutual_tls(ca: trustme.CA, tmp_path: Path) -> None:
    bundle, cert, key = tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key"
    ca.cert_pem.write_to_path(str(bundle))
    client = ca.issue_cert("daemon@example.org")
    client.cert_chain_pems[0].write_to_path(str(cert))
    client.private_key_pem.write_to_path(str(key))
    for server in tls_remote(ca, client_ca=True):
        config = http_config(
            server.url, ca_bundle=str(bundle), client_cert=str(cert), client_key=str(key)
        )
        with RequestsTransport(config) as t:
            t.send(Update("s", "ready"))
        assert 1 == len(server.posts())


def test_a_missing_ca_bundle_is_a_config_error_at_once(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=r"remote\.ca_bundle: .* does not exist"):
        RequestsTransport(http_config("https://127.0.0.1:1", ca_bundle=missing))


def test_config_proxy_carries_the_requests(remote: ScriptedRemote, logs: LogCapture) -> None:
    """The scripted remote plays the proxy: it sees absolute-form targets."""
    config = http_config("http://remote.invalid/api", proxy=remote.url)
    with RequestsTransport(config) as t:
        t.send(Update("s", "ready"))
        t.check_health()
    assert [
        ("POST", "http://remote.invalid/api/update"),
        ("GET", "http://remote.invalid/api/health"),
    ] == [(r.method, r.path) for r in remote.requests]
    assert f"Bearer {TOKEN}" == remote.requests[0].headers["Authorization"]
    assert f"through the proxy {remote.url}" in logs.text()


# -- responses: what a daemon's own tests see -------------------------------------------

REMOTE = "https://remote.example/api"


@responses.activate
def test_a_daemons_responses_test_sees_lightd_syncs_calls() -> None:
    """As a daemon's suite would: @responses.activate around code that syncs through a session."""
    responses.add(responses.POST, f"{REMOTE}/update", json={"success": True})
    responses.add(responses.GET, f"{REMOTE}/health", json={"status": 200, "endpoint": "active"})
    config = http_config(REMOTE)
    with requests.Session() as session:
        t = RequestsTransport(config, session=session)
        with SyncEngine(config, transport=t) as engine:  # the engine closes t
            engine.update("my-server-001", "installing")
            engine.error("my-server-001", "image not found")
            assert engine.flush(5)
            t.check_health()
    posts = [c for c in responses.calls if c.request.method == "POST"]
    assert [
        {"event": "update", "server": "my-server-001", "status": "installing"},
        {
            "event": "update",
            "server": "my-server-001",
            "error": "failed",
            "data": "image not found",
        },
    ] == [json.loads(c.request.body or b"") for c in posts]
    assert all(c.request.headers["Authorization"] == f"Bearer {TOKEN}" for c in responses.calls)
    assert f"{REMOTE}/health" in [c.request.url for c in responses.calls]


@responses.activate
def test_the_settings_requests_gets() -> None:
    responses.add(responses.POST, f"{REMOTE}/update", json={"success": True})
    config = http_config(REMOTE, timeout=2.5, proxy="http://proxy.example:3128")
    with RequestsTransport(config) as t:
        t.send(Update("s", "ready"))
    [call] = responses.calls
    kwargs = call.request.req_kwargs  # type: ignore[attr-defined]
    assert (2.5, 2.5) == kwargs["timeout"]
    assert "http://proxy.example:3128" == kwargs["proxies"]["https"]


@responses.activate
def test_verify_and_client_cert_override_the_session(
    ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests lets these beat session.verify; they are not what this test is about.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    bundle, cert = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.cert_pem.write_to_path(str(bundle))
    ca.issue_cert("daemon@example.org").private_key_and_cert_chain_pem.write_to_path(str(cert))
    responses.add(responses.POST, f"{REMOTE}/update", json={"success": True})
    with requests.Session() as session:
        session.verify = "/daemon/corporate-ca.pem"
        session.cert = "/daemon/client.pem"
        config = http_config(REMOTE, ca_bundle=str(bundle), client_cert=str(cert))
        with RequestsTransport(config, session=session) as t:
            t.send(Update("s", "ready"))
        with RequestsTransport(http_config(REMOTE), session=session) as t:
            t.send(Update("s", "ready"))
    first, second = (c.request.req_kwargs for c in responses.calls)  # type: ignore[attr-defined]
    assert (str(bundle), str(cert)) == (first["verify"], first["cert"])
    # Unset in the config: the session's own settings apply.
    assert ("/daemon/corporate-ca.pem", "/daemon/client.pem") == (
        second["verify"],
        second["cert"],
    )


@responses.activate
@pytest.mark.parametrize(
    ("raised", "expected", "match"),
    [
        (requests.exceptions.ConnectTimeout(), RemoteTimeoutError, "no answer within 10 s"),
        (requests.exceptions.ReadTimeout(), RemoteTimeoutError, "no answer within 10 s"),
        (requests.exceptions.SSLError("bad handshake"), RemoteUnreachableError, "TLS failed"),
        (requests.exceptions.ProxyError("no"), RemoteUnreachableError, "the proxy failed"),
        (requests.exceptions.ConnectionError("reset"), RemoteUnreachableError, "failed"),
        (requests.exceptions.ChunkedEncodingError("cut"), RemoteUnreachableError, "failed"),
    ],
)
def test_requests_exceptions_become_delivery_errors(
    raised: Exception, expected: type[Exception], match: str
) -> None:
    responses.add(responses.POST, f"{REMOTE}/update", body=raised)
    with RequestsTransport(http_config(REMOTE)) as t:
        with pytest.raises(expected, match=match) as info:
            t.send(Update("s", "ready"))
    assert info.value.__cause__ is raised
    assert info.value.retryable  # type: ignore[attr-defined]


@responses.activate
def test_a_bug_in_a_session_hook_is_not_disguised() -> None:
    """Only network failures become DeliveryErrors; the engine logs anything else as a bug."""
    responses.add(responses.POST, f"{REMOTE}/update", json={"success": True})

    def broken_hook(response: requests.Response, **kwargs: Any) -> None:
        raise KeyError("oops")

    with requests.Session() as session:
        session.hooks["response"].append(broken_hook)
        with RequestsTransport(http_config(REMOTE), session=session) as t:
            with pytest.raises(KeyError):
                t.send(Update("s", "ready"))
