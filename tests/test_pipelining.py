"""
The batched delivery path against remotes that handle HTTP/1.1 pipelining differently.

A lane takes everything queued at once and the http transport pipelines it on
its kept-alive connection (issue 15). Against each remote here: every update
arrives once or more (a re-send keeps its event id), none is lost, and each
server's updates arrive in the order they were made.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lightd_sync import SyncEngine

from .conftest import TOKEN, http_config
from .servers import ScriptedRemote, read_request, wait_until

ROOT = Path(__file__).resolve().parent.parent
SERVERS, ROUNDS = 20, 15
IN_CI = os.environ.get("CI") == "true"


def burst(engine: SyncEngine) -> None:
    """ROUNDS updates of each of SERVERS servers; the round rides in the error message."""
    for r in range(ROUNDS):
        for s in range(SERVERS):
            assert engine.error(f"s{s}", str(r))


def check_order(bodies: list[dict[str, Any]]) -> None:
    """Each server's rounds, as the remote received them: complete, and never going back."""
    seen: dict[str, list[int]] = defaultdict(list)
    for body in bodies:
        seen[body["server"]].append(int(body["data"]))
    assert set(seen) == {f"s{s}" for s in range(SERVERS)}
    for server, rounds in seen.items():
        firsts = sorted(set(rounds), key=rounds.index)  # order of first arrival
        assert firsts == list(range(ROUNDS)), (server, rounds)


def deliver_all(url: str, **config: Any) -> SyncEngine:
    engine = SyncEngine(http_config(url, workers=1, queue_size=10_000, **config))
    engine.start()
    assert wait_until(lambda: engine.health.healthy is True, timeout=10)
    engine.update("warm", "ready")  # a kept-alive connection, before the burst
    assert engine.flush(5)
    burst(engine)
    assert engine.flush(20), engine.stats()
    stats = engine.stats()
    assert SERVERS * ROUNDS + 1 == stats.delivered == stats.submitted, stats
    return engine


def test_python_http_server_keep_alive(remote: ScriptedRemote) -> None:
    with deliver_all(remote.url) as engine:
        assert engine.transport._pipelining is True  # type: ignore[attr-defined]
    check_order([r.json() for r in remote.posts() if r.json()["server"] != "warm"])


def test_the_reference_receiver_on_waitress() -> None:
    from lightd_sync.testing import LightdRemote

    with LightdRemote() as remote:
        engine = SyncEngine(remote.config(workers=1, queue_size=10_000))
        with engine:
            engine.update("warm", "ready")
            assert engine.flush(5)
            burst(engine)
            assert engine.flush(20), engine.stats()
            assert SERVERS * ROUNDS + 1 == engine.stats().delivered
        bodies = [u for u in remote.updates if u["server"] != "warm"]
    check_order(bodies)


class OneAndClose:
    """Answers one request per connection with ``Connection: close``, as gunicorn's sync workers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()  # guards bodies
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-one-and-close", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.05)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                self._one(conn)

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            request = read_request(conn)
            if request is None:
                return
            head, payload, _ = request
            if head.startswith(b"GET"):
                body = b'{"status": 200, "endpoint": "active"}'
            else:
                with self.lock:
                    self.bodies.append(json.loads(payload))
                body = b'{"success": true}'
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
        except OSError:
            return

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


def test_a_remote_that_answers_one_request_and_closes() -> None:
    server = OneAndClose()
    try:
        with deliver_all(server.url):
            pass
        with server.lock:
            bodies = [b for b in server.bodies if b["server"] != "warm"]
    finally:
        server.stop()
    check_order(bodies)
    assert len(bodies) == SERVERS * ROUNDS, "it never keeps a connection: nothing is pipelined"


def test_a_remote_that_drops_pipelined_requests_falls_back_for_good() -> None:
    """
    Keep-alive for single requests, but the second request of a pipeline is never answered:
    the transport re-sends what was unanswered, one by one, and stops pipelining.
    """
    bodies: list[dict[str, Any]] = []
    lock = threading.Lock()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    stopped = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            buf = b""
            try:
                while True:
                    request = read_request(conn, buf)
                    if request is None:
                        return
                    head, payload, buf = request
                    if head.startswith(b"GET"):
                        body = b'{"status": 200, "endpoint": "active"}'
                    else:
                        with lock:
                            bodies.append(json.loads(payload))
                        body = b'{"success": true}'
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    if buf:  # another request came in the same read: a pipeline
                        return  # answers the first of a pipeline, then hangs up
            except OSError:
                return

    def accept() -> None:
        listener.settimeout(0.05)
        while not stopped.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        with deliver_all(url) as engine:
            assert engine.transport._pipelining is False  # type: ignore[attr-defined]
    finally:
        stopped.set()
        acceptor.join(5)
        listener.close()
    with lock:
        check_order([b for b in bodies if b["server"] != "warm"])


def _nginx() -> Iterator[str]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import remotes  # the benchmark's nginx launcher
    finally:
        sys.path.pop(0)
    exe = remotes.find_nginx()
    if exe is None:
        if IN_CI:
            pytest.fail(".ci/run installs nginx: it must be there in CI")
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    server = remotes.NginxRemote(exe).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def nginx() -> Iterator[str]:
    yield from _nginx()


def test_nginx(nginx: str) -> None:
    """nginx answers every pipelined request (it keeps no record: the counts must match)."""
    with deliver_all(nginx) as engine:
        assert engine.transport._pipelining is True  # type: ignore[attr-defined]


@pytest.fixture
def express() -> Iterator[str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    folder = ROOT / "benchmarks" / "express"
    if node is None or npm is None:
        if IN_CI:
            pytest.fail("node and npm are on this project's machines")
        pytest.skip("node and npm are needed for the Express remote")
    if not (folder / "node_modules" / "express").exists():
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent"],
            cwd=folder,
            check=True,
            timeout=300,
            capture_output=True,
        )
    proc = subprocess.Popen(
        [node, "server.js", "0"],
        cwd=folder,
        env={**os.environ, "LIGHTD_TOKEN": TOKEN},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on "), line
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_express(express: str) -> None:
    with deliver_all(express) as engine:
        assert engine.transport._pipelining is True  # type: ignore[attr-defined]
    import urllib.request

    request = urllib.request.Request(
        f"{express}/servers", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        latest = json.loads(answer.read())["servers"]
    for s in range(SERVERS):  # the last round of each server is its latest state
        assert str(ROUNDS - 1) == latest[f"s{s}"]["data"]
