"""The reference receiver, served for real on 127.0.0.1: contract, validation, limits, audit."""

from __future__ import annotations

import http.client
import io
import json
import math
import socket
import string
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightd_sync import ConfigError
from lightd_sync._server.http import WsgiServer, serve
from lightd_sync._server.ratelimit import RateLimiter
from lightd_sync.receiver import ReceiverApp, ReceiverStore, create_app

from .conftest import TOKEN, LogCapture

JSON = "application/json"
AUTH = f"Bearer {TOKEN}"
fast = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Headers(dict):  # type: ignore[type-arg]
    """Response headers, looked up case-insensitively as HTTP wants."""

    def __init__(self, pairs: Any) -> None:
        super().__init__((k.lower(), v) for k, v in pairs)

    def __getitem__(self, key: str) -> str:
        return str(super().__getitem__(key.lower()))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


@attrs.frozen
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def doc(self) -> Any:
        return json.loads(self.body)


class Client:
    """Talks to a served receiver with http.client, one connection per request."""

    def __init__(self, server: WsgiServer) -> None:
        self.server = server

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: Optional[str] = AUTH,
        content_type: Optional[str] = JSON,
        headers: Optional[dict[str, str]] = None,
    ) -> Answer:
        sent = dict(headers or {})
        if auth is not None:
            sent["Authorization"] = auth
        if body is not None:
            if not isinstance(body, bytes):
                body = json.dumps(body).encode()
            if content_type is not None:
                sent["Content-Type"] = content_type
        conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return Answer(response.status, Headers(response.getheaders()), response.read())
        finally:
            conn.close()

    def post(self, body: Any, **kw: Any) -> Answer:
        return self.request("POST", "/update", body, **kw)

    def get(self, path: str, **kw: Any) -> Answer:
        return self.request("GET", path, **kw)

    def raw(self, data: bytes, *, shut: bool = True) -> Answer:
        """Send *data* as is on a fresh connection; parse the HTTP answer."""
        with socket.create_connection((self.server.host, self.server.port), timeout=10) as sock:
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = Headers(line.split(": ", 1) for line in lines)
        return Answer(int(status_line.split()[1]), headers, body)


class Audit(io.StringIO):
    """An audit stream the tests read back as JSON lines."""

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines()]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def status_body(server: str = "my-server-001", status: str = "installing") -> dict[str, str]:
    return {"event": "update", "server": server, "status": status}


def error_body(server: str = "my-server-001", data: str = "image not found") -> dict[str, str]:
    return {"event": "update", "server": server, "error": "failed", "data": data}


def post_head(length: int, extra: str = "") -> bytes:
    return (
        f"POST /update HTTP/1.1\r\nHost: t\r\nAuthorization: {AUTH}\r\n"
        f"Content-Type: {JSON}\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


@pytest.fixture
def audit() -> Audit:
    return Audit()


@pytest.fixture
def app(audit: Audit) -> Iterator[ReceiverApp]:
    with create_app(TOKEN, rate=math.inf, audit=audit) as receiver_app:
        yield receiver_app


@pytest.fixture
def client(app: ReceiverApp) -> Iterator[Client]:
    with serve(app) as server:
        yield Client(server)


# The contract


def test_health(client: Client) -> None:
    answer = client.get("/health")
    assert answer.status == 200
    # The batch offer rides along; Lightd checks only status and endpoint.
    assert answer.doc == {"status": 200, "endpoint": "active", "batch": {"max": 500}}
    assert answer.doc["status"] == 200 and answer.doc["endpoint"] == "active"
    assert answer.headers["Content-Type"] == JSON


def test_status_update_is_stored(client: Client, app: ReceiverApp) -> None:
    answer = client.post(status_body(), headers={"X-Lightd-Event-Id": "evt-1"})
    assert (answer.status, answer.doc) == (200, {"success": True})
    assert client.post(status_body(status="ready")).status == 200
    latest = app.store.latest()["my-server-001"]
    assert (latest["status"], latest["data"], latest["event_id"]) == ("ready", None, None)
    history = app.store.history("my-server-001")
    assert [(h["status"], h["error"], h["event_id"]) for h in history] == [
        ("installing", None, "evt-1"),
        ("ready", None, None),
    ]
    assert app.store.count() == 2


def test_error_update_is_stored_as_failed_with_data(client: Client, app: ReceiverApp) -> None:
    assert client.post(status_body()).status == 200
    assert client.post(error_body()).status == 200
    latest = app.store.latest()["my-server-001"]
    assert (latest["status"], latest["data"]) == ("failed", "image not found")
    last = app.store.history("my-server-001")[-1]
    assert (last["status"], last["error"], last["data"]) == ("failed", "failed", "image not found")


def test_a_repeated_event_id_is_acknowledged_but_stored_once(
    client: Client, app: ReceiverApp, audit: Audit
) -> None:
    sent = {"X-Lightd-Event-Id": "5f0c6a0e-2d7f-4a51-9f55-0c1f3b7a9d21"}
    for _ in range(2):
        answer = client.post(status_body(), headers=sent)
        assert (answer.status, answer.doc) == (200, {"success": True})
    assert client.post(status_body("other-server"), headers=sent).status == 200
    assert app.store.count() == 2
    assert [r["outcome"] for r in audit.records()] == ["stored", "duplicate", "stored"]


def test_unknown_keys_and_a_charset_are_accepted(client: Client, app: ReceiverApp) -> None:
    body = {**status_body(), "node": "n1", "extra": {"nested": [1, 2]}}
    assert client.post(body, content_type="application/json; charset=UTF-8").status == 200
    assert app.store.count() == 1


def test_reading_endpoints(client: Client) -> None:
    odd = "my server/ü 001"
    for body in (status_body(), status_body(odd), status_body(odd, "ready")):
        assert client.post(body).status == 200
    servers = client.get("/servers").doc["servers"]
    assert set(servers) == {"my-server-001", odd}
    assert servers[odd]["status"] == "ready"
    assert isinstance(servers[odd]["updated_at"], float)
    quoted = "/servers/" + urllib.parse.quote(odd)
    answer = client.get(quoted)
    assert answer.doc["server"] == odd
    assert [h["status"] for h in answer.doc["history"]] == ["installing", "ready"]
    assert [h["status"] for h in client.get(quoted + "?limit=1").doc["history"]] == ["ready"]
    assert client.get(quoted + "?limit=0").status == 400
    assert client.get("/servers/nobody").status == 404
    assert client.get("/servers/%ff").status == 404


# Authentication


@pytest.mark.parametrize(
    "auth",
    [None, "", "Bearer", "Bearer ", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
     "Bearer wrong-token-sent-by-mistake", TOKEN],
)  # fmt: skip
def test_a_bad_token_is_401_and_never_echoed(
    client: Client, app: ReceiverApp, audit: Audit, auth: Optional[str]
) -> None:
    for answer in (client.get("/health", auth=auth), client.post(status_body(), auth=auth)):
        assert answer.status == 401
        assert answer.doc["success"] is False
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN.encode() not in answer.body
        assert b"wrong-token" not in answer.body
    assert app.store.count() == 0
    assert [r["outcome"] for r in audit.records()] == ["unauthorized", "unauthorized"]
    assert TOKEN not in audit.getvalue()


def test_the_scheme_is_case_insensitive(client: Client) -> None:
    assert client.get("/health", auth=f"bearer {TOKEN}").status == 200


# Validation


def test_content_type_must_be_json(client: Client) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None,
                         "application/json; charset=latin-1"):  # fmt: skip
        answer = client.post(status_body(), content_type=content_type)
        assert answer.status == 415, content_type
        assert answer.doc["error"].startswith("Content-Type:")


def test_a_huge_content_length_is_refused_unread(client: Client) -> None:
    # No body follows: an answer at all proves it was not waited for. serve()
    # bounds bodies by the app's max_body (a batch's, 8 MiB), so the server
    # refuses larger ones unread; POST /update's own bound (64 KiB) is the app's.
    started = time.monotonic()
    for length in (8 * 2**20 + 1, 10**12, 10**40):
        assert client.raw(post_head(length), shut=False).status == 413
    assert time.monotonic() - started < 5
    assert client.raw(post_head(65537) + b"{" * 65537).status == 413  # over /update's bound
    assert client.raw(post_head(65536) + b"{" * 65536).status == 400  # read: not JSON


def test_a_body_over_max_body_is_413(audit: Audit) -> None:
    with create_app(TOKEN, max_body=100, rate=math.inf, audit=audit) as app, serve(app) as server:
        client = Client(server)
        # POST /update's bound is the app's (the server's is a batch's): refused, audited.
        assert client.post(error_body(data="x" * 200)).status == 413
        assert client.post(error_body(data="x" * 10)).status == 200
        assert [r["outcome"] for r in audit.records()] == ["too_large", "stored"]
    with create_app(TOKEN, max_body=100, rate=math.inf, batch_max=0) as app, serve(app) as srv:
        # Without batches the server's bound is max_body itself.
        assert app.max_body == 100
        assert Client(srv).post(error_body(data="x" * 200)).status == 413


FIELD_CASES = [
    ([1, 2], "body"),
    ("update", "body"),
    ({"server": "s", "status": "ready"}, "event"),
    ({"event": "Update", "server": "s", "status": "ready"}, "event"),
    ({"event": "update", "status": "ready"}, "server"),
    ({"event": "update", "server": "", "status": "ready"}, "server"),
    ({"event": "update", "server": 7, "status": "ready"}, "server"),
    ({"event": "update", "server": "s" * 256, "status": "ready"}, "server"),
    ({"event": "update", "server": "a\nb", "status": "ready"}, "server"),
    ({"event": "update", "server": "a\x00b", "status": "ready"}, "server"),
    ({"event": "update", "server": "s"}, "status"),
    ({"event": "update", "server": "s", "status": "done"}, "status"),
    ({"event": "update", "server": "s", "status": None}, "status"),
    ({"event": "update", "server": "s", "status": "ready", "error": "failed"}, "error"),
    ({"event": "update", "server": "s", "error": "", "data": "x"}, "error"),
    ({"event": "update", "server": "s", "error": 7}, "error"),
    ({"event": "update", "server": "s", "error": "x" * 8193}, "error"),
    ({"event": "update", "server": "s", "error": "a\x00b"}, "error"),
    ({"event": "update", "server": "s", "error": "failed", "data": 3}, "data"),
    ({"event": "update", "server": "s", "error": "failed", "data": "\ud800"}, "data"),
]


@pytest.mark.parametrize(("body", "field"), FIELD_CASES)
def test_each_invalid_field_is_named(
    client: Client, app: ReceiverApp, body: Any, field: str
) -> None:
    answer = client.post(body)
    assert answer.status == 400
    assert answer.doc["success"] is False
    assert answer.doc["error"].startswith(f"{field}:"), answer.doc
    assert app.store.count() == 0


def test_the_server_rule_is_spelled_out(client: Client) -> None:
    assert client.post(status_body("")).doc["error"] == (
        "server: must be a non-empty string of at most 255 printable characters"
    )
    assert client.post(status_body("s" * 255)).status == 200


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{", "body: not valid JSON"),
        (b"", "body: not valid JSON"),
        (b"[" * 100_00 + b"]" * 100_00, "body: not valid JSON"),  # deeper than recursion
        (b'{"a": ' + b"1" * 5000 + b"}", "body: not valid JSON"),  # over int digit limits
        (b'{"event": "update", "server": "\xff\xfe", "status": "ready"}', "body: not valid UTF-8"),
        (b"\xef\xbb\xbf{}", "body: not valid JSON"),  # a BOM is not JSON
    ],
)
def test_undecodable_bodies_are_400(client: Client, body: bytes, error: str) -> None:
    answer = client.post(body)
    assert (answer.status, answer.doc["error"]) == (400, error)


def raw_reply(server: WsgiServer, data: bytes, *, shut: bool) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_truncated_body_is_never_handed_to_the_app(client: Client, app: ReceiverApp) -> None:
    # The server reads the whole body before the app sees the request: a
    # client that stops short gets no answer, and nothing is stored.
    assert raw_reply(client.server, post_head(100) + b'{"event": "upd', shut=True) == b""
    assert app.store.count() == 0
    assert client.get("/health").status == 200


def test_a_stalled_body_is_cut_after_the_request_timeout() -> None:
    with create_app(TOKEN, rate=math.inf) as app, serve(app, request_timeout=0.3) as server:
        started = time.monotonic()
        assert raw_reply(server, post_head(100) + b'{"event": "upd', shut=False) == b""
        # Checked every second (when waitress runs its maintenance).
        assert 0.3 < time.monotonic() - started < 3.5
        assert app.store.count() == 0


def test_content_length_is_required_and_numeric(client: Client) -> None:
    head = f"POST /update HTTP/1.1\r\nHost: t\r\nAuthorization: {AUTH}\r\nContent-Type: {JSON}\r\n"
    assert client.raw(head.encode() + b"\r\n{}").status == 411
    assert client.raw(head.encode() + b"Content-Length: 1e3\r\n\r\n{}").status == 400


def test_a_bad_event_id_is_400(client: Client, app: ReceiverApp) -> None:
    answer = client.post(status_body(), headers={"X-Lightd-Event-Id": "e" * 65})
    assert answer.status == 400
    assert answer.doc["error"].startswith("X-Lightd-Event-Id:")
    assert client.post(status_body(), headers={"X-Lightd-Event-Id": "e" * 64}).status == 200


# Routing


@pytest.mark.parametrize(
    "path", ["/", "/health/", "/update/x", "/HEALTH", "/api/health", "/servers/"]
)
def test_unknown_paths_are_404(client: Client, path: str) -> None:
    answer = client.get(path)
    assert answer.status == 404
    assert answer.doc["success"] is False


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("POST", "/health", "GET"), ("GET", "/update", "POST"), ("PUT", "/update", "POST"),
     ("DELETE", "/servers", "GET"), ("HEAD", "/health", "GET"), ("POST", "/servers/x", "GET")],
)  # fmt: skip
def test_wrong_methods_are_405_with_allow(
    client: Client, method: str, path: str, allow: str
) -> None:
    answer = client.request(method, path, status_body() if method in ("POST", "PUT") else None)
    assert answer.status == 405
    assert answer.headers["Allow"] == allow
    if method != "HEAD":
        assert answer.doc["success"] is False


# Rate limit


def test_rate_limit_answers_429_with_retry_after(audit: Audit) -> None:
    clock = FakeClock()
    app = create_app(TOKEN, rate=0.5, burst=2, clock=clock, audit=audit)
    with app, serve(app) as server:
        client = Client(server)
        assert [client.get("/health").status for _ in range(2)] == [200, 200]
        limited = client.post(status_body())
        assert limited.status == 429
        assert limited.headers["Retry-After"] == "2"
        assert limited.doc["success"] is False
        clock.now += 2.0
        assert client.get("/health").status == 200
        assert client.get("/health", auth=None).status == 429  # no token is no way around it
        assert audit.records()[2]["outcome"] == "rate_limited"
        assert app.store.count() == 0


def test_rate_limiter_memory_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, 5, clock=clock, max_clients=100)
    for i in range(1000):
        assert limiter.acquire(f"10.0.{i // 256}.{i % 256}") == 0.0
    assert len(limiter) == 100
    clock.now += 0.5  # every bucket is full again: all forgotten
    assert limiter.acquire("a") == 0.0
    assert len(limiter) == 1
    for _ in range(4):
        limiter.acquire("a")
    assert limiter.acquire("a") == pytest.approx(0.1)
    assert RateLimiter(math.inf, 1).acquire("a") == 0.0


# Concurrency and storage


@pytest.mark.parametrize("on_disk", [False, True], ids=["memory", "file"])
def test_concurrent_posts_all_land(tmp_path: Path, on_disk: bool) -> None:
    db = str(tmp_path / "recv.sqlite3") if on_disk else None
    threads, per_thread = 16, 50
    failures: list[object] = []
    with create_app(TOKEN, db_path=db, rate=math.inf) as app, serve(app) as server:
        client = Client(server)

        def worker(n: int) -> None:
            for i in range(per_thread):
                status = "ready" if i == per_thread - 1 else "installing"
                answer = client.post(status_body(f"srv-{n}", status))
                if answer.status != 200:
                    failures.append(answer)

        pool = [threading.Thread(target=worker, args=(n,), name=f"test-w{n}") for n in range(16)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(30)
        assert failures == []
        assert app.store.count() == threads * per_thread
        latest = app.store.latest()
        assert len(latest) == threads
        assert {v["status"] for v in latest.values()} == {"ready"}
        assert all(len(app.store.history(f"srv-{n}")) == per_thread for n in range(threads))
    if on_disk:
        store = ReceiverStore(db)
        try:
            assert store.count() == threads * per_thread  # committed, and it persists
        finally:
            store.close()


def test_a_closed_receiver_answers_503(client: Client, app: ReceiverApp) -> None:
    app.close()
    answer = client.post(status_body())
    assert answer.status == 503
    assert answer.doc["success"] is False
    assert client.get("/health").status == 200  # health needs no storage
    app.close()  # again: nothing


def test_a_bug_is_a_logged_500_and_serving_goes_on(
    client: Client, app: ReceiverApp, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kw: object) -> int:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(app.store, "add_many", broken)
    answer = client.post(status_body())
    assert answer.status == 500
    assert answer.doc == {"success": False, "error": "internal error; see the receiver's log"}
    assert any(
        r.name == "lightd_sync.receiver" and "RuntimeError: simulated bug" in r.getMessage()
        for r in logs.records
    )
    assert "simulated bug" not in answer.body.decode()
    assert client.get("/health").status == 200


# Audit


def test_audit_file_has_one_json_line_per_attempt_without_the_token(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    with create_app(TOKEN, audit=str(path), rate=math.inf) as app, serve(app) as server:
        client = Client(server)
        client.get("/health")
        client.post(status_body(), headers={"X-Lightd-Event-Id": "evt-9"})
        client.post(status_body(""))
        client.get("/health", auth="Bearer nope")
        client.get(f"/{TOKEN}")  # a token in the path is still never written
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["method"], r["outcome"], r["status"]) for r in records] == [
        ("GET", "ok", 200),
        ("POST", "stored", 200),
        ("POST", "invalid", 400),
        ("GET", "unauthorized", 401),
        ("GET", "not_found", 404),
    ]
    assert records[1]["server"] == "my-server-001"
    assert records[1]["event_id"] == "evt-9"
    assert records[0]["server"] is None
    assert records[2]["error"].startswith("server:")
    for record in records:
        assert record["client"] == "127.0.0.1"
        assert record["ts"].endswith("Z")
        assert time.strptime(record["ts"][:19], "%Y-%m-%dT%H:%M:%S")
    assert TOKEN not in path.read_text()
    assert "Authorization" not in path.read_text()


def test_audit_dash_means_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with create_app(TOKEN, audit="-") as app, serve(app) as server:
        Client(server).get("/health")
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["outcome"] for line in lines] == ["ok"]


# Arguments


@pytest.mark.parametrize(
    ("kw", "key"),
    [({"rate": 0}, "rate"), ({"rate": "fast"}, "rate"), ({"burst": 0}, "burst"),
     ({"burst": 1.5}, "burst"), ({"max_body": 0}, "max_body"), ({"audit": 3}, "audit"),
     ({"audit": "/nonexistent-dir/x/audit.log"}, "audit")],
)  # fmt: skip
def test_bad_arguments_are_config_errors(kw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}:"):
        create_app(TOKEN, **kw)


@pytest.mark.parametrize("token", ["", "has space", "tab\there", "ünïcode", 42])
def test_bad_tokens_are_refused_without_echo(token: Any) -> None:
    with pytest.raises(ConfigError, match=r"^token:") as info:
        create_app(token)
    if token:
        assert str(token) not in str(info.value)


# Generated input: the app always answers a JSON 2xx/4xx and keeps serving


FIELD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["update", "installing", "ready", "failed", "my-server-001", ""]),
    st.lists(st.integers(), max_size=2),
)
UPDATE_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "event": st.one_of(st.just("update"), FIELD_VALUES),
        "server": st.one_of(st.text(min_size=1, max_size=260), FIELD_VALUES),
        "status": st.one_of(st.sampled_from(["installing", "ready", "failed"]), FIELD_VALUES),
        "error": st.one_of(st.just("failed"), FIELD_VALUES),
        "data": st.one_of(st.text(max_size=50), FIELD_VALUES),
        "extra": FIELD_VALUES,
    },
)
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)
LATIN1 = st.text(st.characters(max_codepoint=255), max_size=40)
BODIES = st.one_of(
    UPDATE_LIKE.map(lambda d: json.dumps(d).encode()),
    ANY_JSON.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=200),
)
PATHS = st.one_of(
    st.sampled_from(["/health", "/update", "/servers", "/servers/my-server-001"]),
    LATIN1.map(lambda s: "/" + s),
)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
AUTHS = st.one_of(st.sampled_from([AUTH, AUTH, "", "Bearer", f"Basic {TOKEN}"]), LATIN1)
CONTENT_TYPES = st.one_of(
    st.sampled_from([JSON, JSON, "application/json; charset=utf-8", "text/plain", ""]), LATIN1
)


def valid_update(doc: Any) -> bool:
    """An independent statement of the contract's body rules."""
    if not isinstance(doc, dict) or doc.get("event") != "update":
        return False
    server = doc.get("server")
    if not (isinstance(server, str) and 0 < len(server) <= 255 and server.isprintable()):
        return False
    if ("status" in doc) == ("error" in doc):
        return False
    if "status" in doc:
        return doc["status"] in ("installing", "ready", "failed")
    # Any non-empty error (at most 8,192 characters), with or without data (null: left out).
    error, data = doc["error"], doc.get("data")
    if not (isinstance(error, str) and 0 < len(error) <= 8192 and _text_ok(error)):
        return False
    return data is None or (isinstance(data, str) and _text_ok(data))


def _text_ok(value: str) -> bool:
    """Text a store can hold: valid Unicode (no lone surrogate), no NUL (PostgreSQL's text)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return "\0" not in value


def call(app: ReceiverApp, method: str, path: str, *, auth: str, ctype: str, body: bytes) -> Answer:
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": ctype,
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_AUTHORIZATION": auth,
        "wsgi.input": io.BytesIO(body),
    }
    started: list[Any] = []
    chunks = app(environ, lambda status, headers: started.append((status, headers)))
    ((status, headers),) = started
    return Answer(int(status.split()[0]), dict(headers), b"".join(chunks))


def check_answer(answer: Answer) -> None:
    assert answer.status in (200, 400, 401, 404, 405, 413, 415), answer
    assert answer.headers["Content-Type"] == JSON
    doc = answer.doc
    assert isinstance(doc, dict)
    if answer.status != 200:
        assert doc["success"] is False
        assert isinstance(doc["error"], str)
    assert TOKEN.encode() not in answer.body


def test_generated_requests_called_directly() -> None:
    audit = Audit()
    with create_app(TOKEN, rate=math.inf, audit=audit) as app:

        @fast
        @given(METHODS, PATHS, AUTHS, CONTENT_TYPES, BODIES)
        def check(method: str, path: str, auth: str, ctype: str, body: bytes) -> None:
            before = app.store.count()
            answer = call(app, method, path, auth=auth, ctype=ctype, body=body)
            check_answer(answer)
            try:
                doc = json.loads(body.decode("utf-8"))
            except (ValueError, RecursionError):
                doc = None
            expect_stored = (
                auth in (AUTH, f"bearer {TOKEN}")
                and method == "POST"
                and path == "/update"
                and ctype.lower().replace(" ", "") in (JSON, JSON + ";charset=utf-8")
                and valid_update(doc)
            )
            if expect_stored:
                assert answer.status == 200, answer
            assert app.store.count() == before + (answer.status == 200 and path == "/update")

        check()
        assert call(app, "GET", "/health", auth=AUTH, ctype="", body=b"").status == 200
    assert TOKEN not in audit.getvalue()


@settings(max_examples=100, deadline=None)
@given(UPDATE_LIKE)
def test_the_validation_agrees_with_the_contract(doc: dict[str, Any]) -> None:
    with create_app(TOKEN, rate=math.inf) as app:
        answer = call(app, "POST", "/update", auth=AUTH, ctype=JSON, body=json.dumps(doc).encode())
        assert (answer.status == 200) == valid_update(doc), (doc, answer)
        check_answer(answer)


def test_generated_requests_over_real_sockets(app: ReceiverApp) -> None:
    safe_path = st.text(string.ascii_letters + string.digits + "/-_.~%", max_size=30)
    with serve(app) as server:
        client = Client(server)

        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        @given(METHODS, st.one_of(PATHS.filter(str.isascii), safe_path.map(lambda s: "/" + s)),
               st.sampled_from([AUTH, "", "Bearer x"]), BODIES)  # fmt: skip
        def check(method: str, path: str, auth: str, body: bytes) -> None:
            path = urllib.parse.quote(path, safe="/%")
            answer = client.request(method, path, body if method == "POST" else None, auth=auth)
            assert answer.status in (200, 400, 401, 404, 405, 413, 415)
            if method != "HEAD":
                check_answer(answer)

        check()
        assert client.get("/health").status == 200


def test_a_stale_update_arriving_late_does_not_replace_the_latest_state() -> None:
    """Time-ordered event ids let the store keep the newer state (history keeps both)."""
    from lightd_sync import Update
    from lightd_sync._ids import new_event_id
    from lightd_sync.receiver import ReceiverStore

    older, newer = new_event_id(), new_event_id()
    store = ReceiverStore()
    try:
        assert store.add(Update("s", "ready", event_id=newer))
        assert store.add(Update("s", "installing", event_id=older))  # arrives late
        assert "ready" == store.latest()["s"]["status"]
        assert 2 == len(store.history("s"))
        assert store.add(Update("s", "installing"))  # no id: a plain Lightd client
        assert "installing" == store.latest()["s"]["status"]
    finally:
        store.close()
