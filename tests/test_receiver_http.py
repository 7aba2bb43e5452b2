"""The receiver over HTTP: GET /servers pages, no secret in any log, env and gunicorn set-ups."""

from __future__ import annotations

import io
import json
import logging
import math
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightd_sync import ConfigError
from lightd_sync._server.audit import Scrubber
from lightd_sync.receiver import ReceiverApp, create_app, create_app_from_env, serve

from .conftest import TOKEN
from .receivers import Process, call, child_env, receiver

# -- GET /servers: pages, streamed -------------------------------------------


@pytest.fixture
def app() -> Iterator[ReceiverApp]:
    with create_app(TOKEN, rate=math.inf) as receiver_app:
        yield receiver_app


def fill(app: ReceiverApp, count: int) -> list[str]:
    from lightd_sync import Update

    names = [f"node-{i:04d}" for i in range(count)]
    for name in names:
        app.store.add(Update(name, "ready"))
    return names


def test_servers_come_in_pages_with_a_next_cursor(app: ReceiverApp) -> None:
    names = fill(app, 23)
    with serve(app) as server:
        seen: list[str] = []
        after = ""
        for _ in range(10):
            status, doc = call(f"{server.url}/servers?limit=10&after={after}")
            assert status == 200
            seen += list(doc["servers"])
            if doc["next"] is None:
                break
            after = doc["next"]
        assert seen == names
        status, doc = call(f"{server.url}/servers")  # no limit: everything, streamed
        assert list(doc["servers"]) == names
        assert doc["next"] is None
        assert doc["servers"]["node-0000"]["status"] == "ready"


def test_servers_streams_without_a_content_length(app: ReceiverApp) -> None:
    fill(app, 1200)  # more than one page of the store
    with serve(app) as server, socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(
            f"GET /servers HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, _ = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert b"Content-Length" not in head


@pytest.mark.parametrize("query", ["limit=0", "limit=10001", "limit=x", "after=" + "a" * 256])
def test_bad_page_parameters_are_400(app: ReceiverApp, query: str) -> None:
    with serve(app) as server:
        status, doc = call(f"{server.url}/servers?{query}")
    assert status == 400
    assert doc["error"].split(":")[0] in ("limit", "after")


# -- The token, or any 8 characters of it, in no log -------------------------


def windows(secret: str, size: int = 8) -> set[str]:
    return {secret[i : i + size].lower() for i in range(len(secret) - size + 1)}


def leaks(text: str, secret: str = TOKEN) -> list[str]:
    lowered = text.lower()
    return sorted(w for w in windows(secret) if w in lowered)


@given(text=st.text(max_size=200), start=st.integers(0, len(TOKEN) - 8), size=st.integers(8, 40))
@settings(max_examples=300, deadline=None)
def test_the_scrubber_leaves_no_8_characters_of_the_token(text: str, start: int, size: int) -> None:
    piece = TOKEN[start : start + size]
    for variant in (piece, piece.upper(), piece.swapcase()):
        dirty = text[: len(text) // 2] + variant + text[len(text) // 2 :]
        assert leaks(Scrubber(TOKEN)(dirty)) == []
    assert Scrubber(TOKEN)(text) == text or leaks(text)  # nothing else is touched


PIECES = st.builds(
    lambda start, size, upper: (
        TOKEN[start : start + size].upper() if upper else TOKEN[start : start + size]
    ),
    st.integers(0, len(TOKEN) - 8),
    st.integers(8, len(TOKEN)),
    st.booleans(),
)


@st.composite
def hostile_requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A raw request with pieces of the token in some of its parts; and whether store.add breaks."""
    piece = draw(PIECES)
    where = draw(
        st.sets(st.sampled_from(["method", "path", "query", "header", "body", "event"]), min_size=1)
    )
    method = piece.upper() if "method" in where else draw(st.sampled_from(["POST", "GET"]))
    path = "/" + piece if "path" in where else draw(st.sampled_from(["/update", "/servers/x"]))
    if "path" in where and draw(st.booleans()):
        path = "/servers/" + piece
    if "path" in where and draw(st.booleans()):
        path = "/update" if method == "POST" else path
        method = "POST"
        where = where | {"body"}
    query = "?after=" + piece if "query" in where else ""
    body = {"event": "update", "server": piece if "body" in where else "s1", "status": "ready"}
    if "body" in where and draw(st.booleans()):
        body = {"event": "update", "server": "s1", "error": "failed", "data": piece}
    raw_body = json.dumps(body).encode()
    auth = draw(st.sampled_from([f"Bearer {TOKEN}", f"Bearer {piece}", "Bearer wrong"]))
    headers = [
        "Host: t",
        f"Authorization: {auth}",
        "Content-Type: application/json",
        f"Content-Length: {len(raw_body)}",
    ]
    if "header" in where:
        headers.append(f"X-{piece}: {piece}")
    if "event" in where:
        headers.append(f"X-Lightd-Event-Id: {piece}")
    head = f"{method} {path}{query} HTTP/1.1\r\n" + "".join(h + "\r\n" for h in headers)
    return head.encode() + b"\r\n" + raw_body, draw(st.booleans())


class Everything(logging.Handler):
    """Every record of every logger (waitress's too), formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def everything() -> Iterator[Everything]:
    handler = Everything()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


@given(request=hostile_requests())
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_no_log_or_audit_line_holds_8_characters_of_the_token(
    request: tuple[bytes, bool], everything: Everything, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, broken = request
    audit = io.StringIO()
    everything.lines.clear()
    with create_app(TOKEN, rate=math.inf, audit=audit) as app:
        if broken:  # a 500 whose exception quotes the update (and so the token)

            def add(update: Any) -> bool:
                raise RuntimeError(f"cannot store {update!r} from {data!r}")

            monkeypatch.setattr(app.store, "add", add)
        with serve(app) as server, socket.create_connection((server.host, server.port)) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            sock.settimeout(10)
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.")
    written = audit.getvalue() + "\n".join(everything.lines)
    assert leaks(written) == [], written
    assert leaks(answer.decode("latin-1").split("\r\n\r\n", 1)[-1]) == []  # nor echoed


# -- create_app_from_env and gunicorn -----------------------------------------


def test_create_app_from_env_reads_the_token_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    secret.chmod(0o600)
    db = tmp_path / "r.sqlite3"
    env = {"LIGHTD_RECEIVER_TOKEN_FILE": str(secret), "LIGHTD_RECEIVER_DB": str(db),
           "LIGHTD_RECEIVER_HISTORY": "3"}  # fmt: skip
    with create_app_from_env(env) as app, serve(app) as server:
        for _ in range(5):
            assert (
                call(
                    f"{server.url}/update",
                    "POST",
                    {"event": "update", "server": "s", "status": "ready"},
                )[0]
                == 200
            )
        assert len(app.store.history("s")) == 3
    assert db.exists()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "LIGHTD_RECEIVER_TOKEN"),
        ({"LIGHTD_RECEIVER_TOKEN_FILE": "/nonexistent/token"}, "LIGHTD_RECEIVER_TOKEN_FILE"),
        (
            {"LIGHTD_RECEIVER_TOKEN": TOKEN, "LIGHTD_RECEIVER_HISTORY": "many"},
            "LIGHTD_RECEIVER_HISTORY",
        ),
        ({"LIGHTD_RECEIVER_TOKEN": TOKEN, "LIGHTD_RECEIVER_RATE": "-1"}, "LIGHTD_RECEIVER_RATE"),
        ({"LIGHTD_RECEIVER_TOKEN": "has space"}, "LIGHTD_RECEIVER_TOKEN"),
    ],
)
def test_create_app_from_env_names_the_bad_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named) as caught:
        create_app_from_env(env)
    assert TOKEN not in str(caught.value)


def gunicorn_argv(*args: str) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", *args]
    help_text = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    if "--no-control-socket" in help_text:  # gunicorn 24+: no socket in the home directory
        argv.append("--no-control-socket")
    return [*argv, "lightd_sync.receiver:create_app_from_env()"]


def test_gunicorn_serves_the_receiver_with_the_token_from_the_environment(tmp_path: Path) -> None:
    pytest.importorskip("gunicorn")
    db = tmp_path / "fleet.sqlite3"
    audit = tmp_path / "audit.jsonl"
    home = tmp_path / "home"
    home.mkdir()
    env = child_env(
        LIGHTD_RECEIVER_TOKEN=TOKEN, LIGHTD_RECEIVER_DB=str(db), LIGHTD_RECEIVER_AUDIT=str(audit),
        HOME=str(home), XDG_RUNTIME_DIR=str(home / "none"),
    )  # fmt: skip
    with Process(
        gunicorn_argv("--workers", "2"), env=env, ready=r"Listening at: (http://127\.0\.0\.1:\d+)"
    ) as proc:
        proc.wait_for("Booting worker")
        deadline = time.monotonic() + 20
        while True:  # the workers import the app after the master listens
            try:
                status, doc = call(f"{proc.url}/health")
                break
            except OSError:
                assert time.monotonic() < deadline, proc.text()
                time.sleep(0.1)
        assert (status, doc) == (200, {"status": 200, "endpoint": "active", "batch": {"max": 500}})
        body = {"event": "update", "server": "gunicorn-node", "status": "ready"}
        for _ in range(4):  # over both workers, one SQLite file
            assert call(f"{proc.url}/update", "POST", body)[0] == 200
        status, doc = call(f"{proc.url}/servers/gunicorn-node")
        assert status == 200
        assert len(doc["history"]) == 4
        assert TOKEN not in " ".join(proc.proc.args)  # type: ignore[arg-type]
    assert TOKEN not in proc.text()
    assert TOKEN not in audit.read_text()
    assert len(audit.read_text().splitlines()) == 6
    assert not (home / ".gunicorn").exists()  # told not to leave a control socket there


# -- the receiver command: --history and --db -----------------------------------


def test_the_receiver_command_keeps_history_lines(tmp_path: Path) -> None:
    db = tmp_path / "fleet.sqlite3"
    with receiver("--db", str(db), "--history", "2", "--no-audit") as proc:
        assert "history: 2" in proc.text()
        for status in ("installing", "ready", "failed"):
            body = {"event": "update", "server": "s1", "status": status}
            assert call(f"{proc.url}/update", "POST", body)[0] == 200
        status, doc = call(f"{proc.url}/servers/s1")
        assert [h["status"] for h in doc["history"]] == ["ready", "failed"]
    assert proc.proc.returncode == 0


def test_an_unreachable_postgres_is_a_clear_error() -> None:
    pytest.importorskip("psycopg")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://lightd:pa55word@127.0.0.1:{port}/fleet?connect_timeout=2"
    done = subprocess.run(
        [sys.executable, "-m", "lightd_sync", "receiver", "--port", "0", "--db", url],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert done.stderr.startswith("lightd-sync: error: --db postgresql://lightd:***@127.0.0.1"), (
        done.stderr
    )
    assert "Traceback" not in done.stderr
    assert "pa55word" not in done.stderr + done.stdout


def test_a_burst_of_clients_leaves_the_receiver_quiet() -> None:
    # 32 clients at once against 8 worker threads: requests wait for a worker,
    # as designed, and nothing is written about it.
    with receiver("--no-audit", "--rate", "1e6", "--burst", "1000000") as proc:
        body = {"event": "update", "server": "burst", "status": "ready"}
        with ThreadPoolExecutor(32, thread_name_prefix="test-burst") as pool:
            answers = list(
                pool.map(lambda _: call(f"{proc.url}/update", "POST", body)[0], range(320))
            )
        assert answers == [200] * 320
    assert proc.proc.returncode == 0
    lines = [line for line in proc.text().splitlines() if "listening on" not in line]
    assert lines == ["lightd-sync receiver: stopped by SIGTERM (320 updates stored)"]
