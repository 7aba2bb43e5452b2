"""HttpTransport against real servers on 127.0.0.1: what it sends and how it judges answers."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lightd_sync import (
    HttpTransport,
    RemoteRejectedError,
    RemoteUnreachableError,
    Update,
)
from lightd_sync._transports.protocol import MAX_RETRY_AFTER, parse_retry_after

from .conftest import LogCapture, http_config
from .faults.servers import (
    CloseWithoutAnswer,
    CutAfterHeaders,
    CutSecondRequest,
    FaultServer,
    Healthy,
    Mode,
)
from .servers import (
    BackloggedListener,
    Reply,
    Request,
    ScriptedRemote,
    serving,
    wait_until,
)


def scripted(reply: Reply) -> Iterator[ScriptedRemote]:
    yield from serving(ScriptedRemote(lambda request: reply))


@pytest.fixture
def transport(remote: ScriptedRemote) -> Iterator[HttpTransport]:
    with HttpTransport(http_config(remote.url + "/api")) as t:
        yield t


def test_keep_alive_reuses_connections(remote: ScriptedRemote, transport: HttpTransport) -> None:
    for _ in range(20):
        transport.send(Update("s", "ready"))
    assert 20 == len(remote.posts())
    assert 1 == len(transport._guard.connections())


# -- transport security and resilience (issue 5) ---------------------------------


@pytest.fixture(autouse=True)
def _no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's proxy settings must not reroute these tests' 127.0.0.1 traffic."""
    for name in ("http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def fault_remote() -> Iterator[FaultServer]:
    yield from serving(FaultServer())


def test_redirects_are_reported_as_a_misconfigured_url() -> None:
    reply = Reply(status=301, headers=(("Location", "https://example.org/api/update"),))
    for server in scripted(reply):
        with HttpTransport(http_config(server.url)) as t:
            with pytest.raises(RemoteRejectedError) as info:
                t.send(Update("s", "ready"))
        assert 1 == len(server.requests), "never followed"
    message = str(info.value)
    assert "remote.url is misconfigured" in message
    assert "'https://example.org/api/update'" in message
    assert not info.value.retryable


def test_plain_http_to_another_host_warns_at_creation(logs: LogCapture) -> None:
    HttpTransport(http_config("http://sync.example.org/api")).close()
    [warning] = logs.messages(logging.WARNING)
    assert "lightd_sync.transport" in warning
    assert "use https:// in production" in warning


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/api", "http://localhost:9", "https://sync.example.org"]
)
def test_no_transport_warning_for_loopback_or_https(url: str, logs: LogCapture) -> None:
    HttpTransport(http_config(url)).close()
    assert not logs.messages(logging.WARNING)


def test_a_kept_alive_connection_closed_while_idle_is_retried_at_once(
    fault_remote: FaultServer,
) -> None:
    """The remote cuts each connection's second request: the transport re-sends it at once."""
    fault_remote.mode = CutSecondRequest()
    with HttpTransport(http_config(fault_remote.url)) as t:
        for i in range(3):
            t.send(Update(f"s-{i}", "ready"))
    # Requests 1, 2 (cut), 2 again on a new connection, 3 (cut), 3 again.
    assert 5 == len(fault_remote.posts())
    assert 3 == fault_remote.connections
    assert {"s-0", "s-1", "s-2"} == set(fault_remote.latest())


def test_a_new_connection_closed_without_answer_is_not_retried(
    fault_remote: FaultServer,
) -> None:
    """Only a reused connection gets the instant retry; the engine's backoff does the rest."""
    fault_remote.mode = CloseWithoutAnswer()
    with HttpTransport(http_config(fault_remote.url)) as t:
        with pytest.raises(RemoteUnreachableError, match="connection failed") as info:
            t.send(Update("s", "ready"))
    assert info.value.retryable
    assert 1 == len(fault_remote.posts())


@attrs.frozen
class _CutSecondAnswer(Mode):
    """Answer the first request on a connection; cut the second one's answer halfway."""

    def handle(self, server: FaultServer, conn: socket.socket, req: Request, nth: int) -> bool:
        if nth >= 2:
            return CutAfterHeaders().handle(server, conn, req, nth)
        return Healthy().handle(server, conn, req, nth)


def test_an_answer_cut_halfway_on_a_reused_connection_is_not_retried(
    fault_remote: FaultServer,
) -> None:
    """The remote saw that request: only the engine's retry policy may send it again."""
    fault_remote.mode = _CutSecondAnswer()
    with HttpTransport(http_config(fault_remote.url)) as t:
        t.send(Update("s", "installing"))
        with pytest.raises(RemoteUnreachableError):
            t.send(Update("s", "ready"))
    assert 2 == len(fault_remote.posts())


def _local_ports(t: HttpTransport) -> set[int]:
    return {c.sock.getsockname()[1] for c in t._guard.connections() if c.sock is not None}


_FORK_WARNING = "ignore:.*fork.*:DeprecationWarning"  # 3.12+: fork() with threads running


@pytest.mark.filterwarnings(_FORK_WARNING)
def test_a_forked_child_never_uses_the_parents_connections(fault_remote: FaultServer) -> None:
    t = HttpTransport(http_config(fault_remote.url))
    try:
        t.send(Update("parent", "installing"))
        parent_ports = _local_ports(t)
        assert 1 == len(parent_ports)
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code only
            code = 1
            try:
                t.send(Update("child", "ready"))
                code = 0 if _local_ports(t).isdisjoint(parent_ports) else 2
                t.close()  # must not shut down the parent's socket
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert 0 == os.waitstatus_to_exitcode(status)
        t.send(Update("parent", "ready"))
        assert parent_ports == _local_ports(t), "the parent's connection is intact and reused"
    finally:
        t.close()
    assert 2 == fault_remote.connections
    assert {"parent", "child"} == set(fault_remote.latest())


def _child_sends(t: HttpTransport, parent_ports: set[int], results: Any) -> None:
    try:
        for i in range(20):
            t.send(Update(f"child-{i}", "ready"))
        shared = _local_ports(t) & parent_ports
        results.put(f"used the parent's connections {shared}" if shared else "ok")
    except Exception as exc:
        results.put(repr(exc))
    finally:
        t.close()


@pytest.mark.filterwarnings(_FORK_WARNING)
def test_multiprocessing_fork_while_the_parent_is_sending(fault_remote: FaultServer) -> None:
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    errors: list[BaseException] = []
    stop = threading.Event()
    with HttpTransport(http_config(fault_remote.url, workers=2)) as t:

        def parent_load() -> None:
            while not stop.is_set():
                try:
                    t.send(Update("parent", "ready"))
                except Exception as exc:
                    errors.append(exc)
                    return

        loader = threading.Thread(target=parent_load)
        loader.start()
        try:
            assert wait_until(lambda: len(fault_remote.posts()) > 5)
            parent_ports = _local_ports(t)
            children = [
                ctx.Process(target=_child_sends, args=(t, parent_ports, results)) for _ in range(3)
            ]
            for child in children:
                child.start()
            for child in children:
                child.join(10)
            assert [0, 0, 0] == [child.exitcode for child in children]
            assert ["ok", "ok", "ok"] == [results.get(timeout=5) for _ in children]
            sent = len(fault_remote.posts())
            assert wait_until(lambda: len(fault_remote.posts()) > sent + 5), "the parent goes on"
            assert parent_ports == _local_ports(t), "the parent's connection was never broken"
        finally:
            stop.set()
            loader.join(5)
    results.close()
    results.join_thread()
    assert not errors
    assert 60 == sum(1 for r in fault_remote.posts() if r.json()["server"].startswith("child-"))


def test_a_pid_change_without_the_fork_hook_gets_fresh_connections(
    fault_remote: FaultServer,
) -> None:
    """A pre-forking server (uWSGI) may fork without running fork hooks: the pid check sees it."""
    with HttpTransport(http_config(fault_remote.url)) as t:
        t.send(Update("s", "installing"))
        [old_conn] = t._guard.connections()
        old_sock = old_conn.sock
        assert old_sock is not None
        t._state = (-1, *t._state[1:])  # as if this process were a child whose hook did not run
        t.send(Update("s", "ready"))
        [new_conn] = t._guard.connections()
        assert new_conn is not old_conn
        assert old_sock.fileno() == -1, "closed, not reused"
    assert 2 == fault_remote.connections


def test_a_connection_that_completes_after_close_cuts_itself(fault_remote: FaultServer) -> None:
    """close() may come between a TCP handshake and the socket being stored: nothing is sent."""
    t = HttpTransport(http_config(fault_remote.url))
    guard = t._guard
    # made, not connected yet: close() finds no socket to shut down
    conn = guard.pool_classes["http"].ConnectionCls("127.0.0.1", fault_remote.port)
    t.close()
    with pytest.raises(ConnectionAbortedError, match="closed"):
        conn.connect()
    assert conn.sock is None or conn.sock.fileno() == -1 or _shut_down(conn.sock)
    assert not fault_remote.requests


def _shut_down(sock: socket.socket) -> bool:
    """Whether *sock* was shut down: a read returns at once with nothing."""
    sock.settimeout(1)
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


# -- the POST path ------------------------------------------


def test_the_post_names_the_host_and_port_and_its_length(remote: ScriptedRemote) -> None:
    with HttpTransport(http_config(remote.url + "/api")) as t:
        t.send(attrs.evolve(Update("s", "ready"), event_id="01a22852-b2c9-7000-bf90-988d229c7f0c"))
    [req] = remote.posts()
    assert f"127.0.0.1:{remote.port}" == req.headers["Host"]
    assert str(len(req.body)) == req.headers["Content-Length"]
    assert "01a22852-b2c9-7000-bf90-988d229c7f0c" == req.headers["X-Lightd-Event-Id"]


def test_a_remote_that_closes_after_each_answer_is_followed() -> None:
    """`Connection: close` answers: every next POST opens a new connection and succeeds."""
    closing = Reply(headers=(("Content-Type", "application/json"), ("Connection", "close")))
    for server in scripted(closing):
        with HttpTransport(http_config(server.url)) as t:
            for _ in range(5):
                t.send(Update("s", "ready"))
        assert 5 == len(server.posts())


def test_close_during_a_tcp_connect_refuses_the_connection() -> None:
    """
    A listener whose backlog is full: connect() hangs in the TCP handshake.

    urllib3 stores a socket only once its TCP connect returned, so close()
    cannot shut it down before that (docs/transports.md): the connect ends by
    the request's deadline, and the request then fails as closed, sending nothing.
    """
    listener = BackloggedListener().start()
    t = HttpTransport(http_config(listener.url, timeout=1))
    errors: list[BaseException] = []

    def send() -> None:
        try:
            t.send(Update("s", "ready"))
        except BaseException as exc:
            errors.append(exc)

    sender = threading.Thread(target=send)
    try:
        started = time.monotonic()
        sender.start()
        assert wait_until(lambda: any(c.lightd_connecting for c in t._guard._conns))
        t.close()
        assert time.monotonic() - started < 0.5, "close() itself never waits for the connect"
        sender.join(5)
        assert time.monotonic() - started < 1.5, "the deadline ends the connect"
    finally:
        t.close()
        listener.stop()
    [err] = errors
    assert isinstance(err, RemoteUnreachableError)
    assert "closed" == err.reason


@given(st.text())
def test_parse_retry_after_never_raises_and_is_finite(value: str) -> None:
    seconds = parse_retry_after(value)
    assert seconds is None or (math.isfinite(seconds) and 0 <= seconds <= MAX_RETRY_AFTER)


@pytest.mark.parametrize(
    "value",
    [
        "99999999999",
        "inf",
        "nan",
        "1e400",
        "-5",
        "9" * 5000,
        "-" + "9" * 5000,
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "Fri, 31 Dec 9999 23:59:59 +2359",
        "Mon, 01 Jan 0001 00:00:00 -2359",
        "\u0663\u0664",
        "\u00e9t\u00e9 \U0001f600",
    ],
)
def test_parse_retry_after_garbage(value: str) -> None:
    seconds = parse_retry_after(value)
    assert seconds is None or (math.isfinite(seconds) and 0 <= seconds <= MAX_RETRY_AFTER)


def test_parse_retry_after_values() -> None:
    assert MAX_RETRY_AFTER == parse_retry_after("99999999999")
    assert 0.0 == parse_retry_after("-5")
    assert 7.0 == parse_retry_after(" 7 ")
    assert MAX_RETRY_AFTER == parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT")
    assert parse_retry_after("inf") is None
