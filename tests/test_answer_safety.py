"""
Every answer judged safely (issue 19, "Why"): scripted raw-socket remotes that misbehave.

Each case is one a new user's network produces: a remote (or a proxy) that
answers twice, a 103 Early Hints, lying lengths, an error text that echoes the
token past the cut, a body cut short holding the token. Against both HTTP
transports. Each fails on the hand-written client of 0.2.0-dev.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Callable

import pytest

from lightd_sync import (
    DeliveryError,
    HttpTransport,
    RemoteConfig,
    RemoteRejectedError,
    RequestsTransport,
    Transport,
    Update,
)
from lightd_sync._transports._errors import causes

from .conftest import TOKEN, http_config
from .servers import read_request, serving

Make = Callable[[RemoteConfig], Transport]
Script = Callable[[int, bytes], bytes]


@pytest.fixture(params=[HttpTransport, RequestsTransport], ids=["http", "requests"])
def make(request: pytest.FixtureRequest) -> Make:
    return request.param  # type: ignore[no-any-return]


def answer(status: int, body: bytes, *, extra: str = "") -> bytes:
    reason = {200: "OK", 422: "Unprocessable", 400: "Bad Request", 500: "Error"}.get(status, "X")
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


OK = answer(200, b'{"success": true}')
REFUSED = answer(422, b'{"success": false, "error": "refused"}')


class KeepAliveRaw:
    """A raw keep-alive remote: request number n (over all connections) gets ``script(n, req)``."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        # Guards count and requests: handler threads write, the test reads.
        self._lock = threading.Lock()
        self.count = 0
        self.connections = 0  # accepted TCP connections
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []

    def start(self) -> KeepAliveRaw:
        thread = threading.Thread(target=self._accept, name="test-raw-keepalive", daemon=True)
        self._threads.append(thread)
        thread.start()
        return self

    def _accept(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self._conns.append(conn)
            with self._lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            rest = b""
            try:
                while not self._stop.is_set():
                    got = read_request(conn, rest)
                    if got is None:
                        return
                    head, body, rest = got
                    with self._lock:
                        self.count += 1
                        n = self.count
                        self.requests.append(head + b"\r\n\r\n" + body)
                    out = self.script(n, head + b"\r\n\r\n" + body)
                    if not out:
                        return
                    conn.sendall(out)
                    if b"Connection: close" in out.split(b"\r\n\r\n", 1)[0]:
                        return
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(5)
        self.sock.close()


def raw(script: Script) -> Iterator[KeepAliveRaw]:
    yield from serving(KeepAliveRaw(script))


def _outcome(t: Transport, server: str) -> object:
    try:
        t.send(Update(server, "ready"))
    except DeliveryError as exc:
        return exc
    return None


def test_bytes_after_an_answer_are_never_the_next_updates_answer(make: Make) -> None:
    """A remote that answers twice: its second answer (a 200) must not judge update 2 (refused)."""

    def script(n: int, request: bytes) -> bytes:
        return OK + OK if n == 1 else REFUSED

    for server in raw(script):
        with make(http_config(server.url)) as t:
            _outcome(t, "a")
            second = _outcome(t, "b")
    assert isinstance(second, RemoteRejectedError), "the refused update counted delivered"
    assert 422 == second.status


def test_bytes_that_come_after_the_answer_never_reach_the_next_request(make: Make) -> None:
    """Bytes still on the socket once the answer was read: that connection is never reused."""

    def script(n: int, request: bytes) -> bytes:
        if n == 1:
            return OK + b"X" * 20000  # past any read buffer: still on the socket
        return REFUSED

    for server in raw(script):
        with make(http_config(server.url)) as t:
            _outcome(t, "a")
            second = _outcome(t, "b")
        assert 2 == server.connections, "a connection with unread bytes is never reused"
    assert isinstance(second, RemoteRejectedError), "the refused update counted delivered"
    assert 422 == second.status


def test_a_103_early_hints_is_not_the_answer(make: Make) -> None:
    """A 103 before the final 422: update 1 fails, and update 2 gets its own answer (a 200)."""

    def script(n: int, request: bytes) -> bytes:
        if n == 1:
            return b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" + REFUSED
        return OK

    for server in raw(script):
        with make(http_config(server.url)) as t:
            first = _outcome(t, "a")
            second = _outcome(t, "b")
    assert isinstance(first, DeliveryError), "the 103 was taken as the answer"
    assert second is None, f"update 2 was judged by update 1's answer: {second}"


@pytest.mark.parametrize(
    "lie",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}" + REFUSED,  # shorter than sent
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 17\r\n\r\n{}",  # two lengths
    ],
    ids=["short-length", "two-lengths"],
)
def test_a_lying_length_never_shifts_answers(make: Make, lie: bytes) -> None:
    def script(n: int, request: bytes) -> bytes:
        return lie if n == 1 else answer(500, b'{"error": "down"}')

    for server in raw(script):
        with make(http_config(server.url, timeout=2)) as t:
            _outcome(t, "a")
            second = _outcome(t, "b")
    assert isinstance(second, RemoteRejectedError)
    assert 500 == second.status, "update 2 was judged by bytes of update 1's answer"


def test_a_length_longer_than_the_body_fails_that_request(make: Make) -> None:
    def script(n: int, request: bytes) -> bytes:
        if n == 1:
            return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{}"
        return OK

    for server in raw(script):
        with make(http_config(server.url, timeout=2)) as t:
            first = _outcome(t, "a")
            second = _outcome(t, "b")
    assert isinstance(first, DeliveryError)
    assert second is None


def test_health_fine_while_update_fails(make: Make) -> None:
    def script(n: int, request: bytes) -> bytes:
        if request.startswith(b"GET"):
            return answer(200, b'{"status": 200, "endpoint": "active"}')
        return answer(500, b'{"error": "database down"}')

    for server in raw(script):
        with make(http_config(server.url)) as t:
            t.check_health()
            err = _outcome(t, "a")
            t.check_health()
    assert isinstance(err, RemoteRejectedError)
    assert "database down" in err.message


def _every_text(exc: BaseException) -> str:
    """Everything an exception shows: messages, reprs, args, attributes, the whole chain."""
    parts: list[str] = []
    for e in causes(exc):
        parts += [str(e), repr(e), *(repr(a) for a in e.args)]
        for value in vars(e).values():
            parts.append(value.decode("latin-1") if isinstance(value, bytes) else repr(value))
    return "\n".join(parts)


@pytest.mark.parametrize("call", ["send", "check_health"])
def test_the_token_is_scrubbed_before_the_text_is_cut(make: Make, call: str) -> None:
    """The token straddles the 200-character cut: not one character of it may show."""
    said = json.dumps({"error": "x" * 190 + TOKEN}).encode()

    def script(n: int, request: bytes) -> bytes:
        return answer(400, said)

    for server in raw(script):
        with make(http_config(server.url)) as t:
            with pytest.raises(DeliveryError) as info:
                t.check_health() if call == "check_health" else t.send(Update("s", "ready"))
    text = _every_text(info.value)
    assert TOKEN[:8] not in text, text[:400]
    assert "<token>" in info.value.message or "x" * 190 in info.value.message


def test_a_body_cut_short_keeps_no_token_in_the_chain(make: Make) -> None:
    """IncompleteRead.partial holds what was read: the token the remote echoed must not stay."""

    def script(n: int, request: bytes) -> bytes:
        body = json.dumps({"error": TOKEN}).encode()
        return b"HTTP/1.1 400 Bad\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n" + body

    def cut(n: int, request: bytes) -> bytes:
        return script(n, request)

    for server in raw(cut):
        with make(http_config(server.url, timeout=2)) as t:
            err = _outcome(t, "a")
    assert isinstance(err, DeliveryError)
    assert TOKEN not in _every_text(err)
    assert TOKEN[:8] not in _every_text(err)


def test_a_redirect_location_is_scrubbed_before_the_cut(make: Make) -> None:
    location = "http://elsewhere.invalid/" + "p" * 160 + TOKEN  # the cut falls in the token

    def script(n: int, request: bytes) -> bytes:
        return answer(302, b"", extra=f"Location: {location}\r\n")

    for server in raw(script):
        with make(http_config(server.url)) as t:
            err = _outcome(t, "a")
    assert isinstance(err, DeliveryError)
    assert "redirect" == err.reason
    assert TOKEN[:8] not in _every_text(err)
