"""
Interop: the engine and both HTTP transports against real remotes of every kind (issue 19).

nginx (offering batches from a static health body, and not), Python's
``http.server``, a one-request-and-close server, the reference receiver, the
Express.js remote, a remote that withdraws its batch offer or answers
``/updates`` with 404 mid-run, and a CONNECT proxy in front of an HTTPS
remote. Against each: every update arrives once or more (a re-send keeps its
event id), none is lost, and each server's updates arrive in the order they
were made. Kept quick: it runs on every tox env.
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
from .servers import Reply, Request, ScriptedRemote, read_request, serving, wait_until

ROOT = Path(__file__).resolve().parent.parent
SERVERS, ROUNDS = 20, 15
IN_CI = os.environ.get("CI") == "true"


def burst(engine: SyncEngine, rounds: range = range(ROUNDS), servers: int = SERVERS) -> None:
    """*rounds* updates of each of *servers* servers; the round rides in the error message."""
    for r in rounds:
        for s in range(servers):
            assert engine.error(f"s{s}", str(r))


def check_order(bodies: list[dict[str, Any]], rounds: int = ROUNDS, servers: int = SERVERS) -> None:
    """Each server's rounds, as the remote received them: complete, and never going back."""
    seen: dict[str, list[int]] = defaultdict(list)
    for body in bodies:
        seen[body["server"]].append(int(body["data"]))
    assert set(seen) == {f"s{s}" for s in range(servers)}
    for server, got in seen.items():
        firsts = sorted(set(got), key=got.index)  # order of first arrival
        assert firsts == list(range(rounds)), (server, got)


def deliver_all(
    url: str, rounds: int = ROUNDS, servers: int = SERVERS, **config: Any
) -> SyncEngine:
    settings: dict[str, Any] = {"workers": 1, "queue_size": 10_000, **config}
    engine = SyncEngine(http_config(url, **settings))
    engine.start()
    assert wait_until(lambda: engine.health.healthy is True, timeout=10)
    engine.update("warm", "ready")  # a kept-alive connection, before the burst
    assert engine.flush(5)
    burst(engine, range(rounds), servers)
    assert engine.flush(20), engine.stats()
    stats = engine.stats()
    assert servers * rounds + 1 == stats.delivered == stats.submitted, stats
    return engine


@pytest.fixture(params=["http", "requests"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


def received(remote: ScriptedRemote) -> list[dict[str, Any]]:
    """Every update the remote received, in order: single POSTs and batch items alike."""
    bodies: list[dict[str, Any]] = []
    for request in remote.posts():
        doc = request.json()
        bodies += doc["updates"] if request.path.endswith("/updates") else [doc]
    return [b for b in bodies if b["server"] != "warm"]


def test_python_http_server_keep_alive(remote: ScriptedRemote, transport: str) -> None:
    with deliver_all(remote.url, transport=transport):
        pass
    check_order(received(remote))
    assert not any(p.path.endswith("/updates") for p in remote.posts()), "no offer: no batch"


class BatchRemote:
    """Python's http.server offering batches, until ``withdrawn`` or ``refuse_after`` batches."""

    def __init__(self, *, refuse_after: int = 0) -> None:
        self.withdrawn = False  # a bool the test flips: the next health answer offers nothing
        self.refuse_after = refuse_after
        self.batches = 0  # POST /updates answered so far (handler threads; a count for the test)
        self.remote = ScriptedRemote(self.script)

    def script(self, request: Request) -> Reply:
        if request.path.endswith("/health"):
            body = {"status": 200, "endpoint": "active"}
            if not self.withdrawn:
                body["batch"] = {"max": 50}  # type: ignore[assignment]
            return Reply(body=json.dumps(body).encode())
        if request.path.endswith("/updates"):
            self.batches += 1
            if self.refuse_after and self.batches > self.refuse_after:
                return Reply(status=404, body=b'{"error": "not found"}')
        return Reply()


@pytest.mark.parametrize("change", ["none", "withdrawn", "404"])
def test_a_remote_that_offers_batches(transport: str, change: str) -> None:
    """Half the rounds, the change (a health answer without the offer, or 404s), the rest."""
    batch = BatchRemote(refuse_after=1_000_000)
    for remote in serving(batch.remote):
        engine = SyncEngine(
            http_config(remote.url, workers=1, queue_size=10_000, transport=transport)
        )
        with engine:
            assert wait_until(lambda e=engine: e.transport.max_batch() == 50, timeout=10)
            burst(engine, range(ROUNDS // 2))
            assert engine.flush(20), engine.stats()
            before = len(remote.posts())
            if change == "withdrawn":
                batch.withdrawn = True
                engine.check_health()
                assert 1 == engine.transport.max_batch()
            elif change == "404":
                batch.refuse_after = batch.batches
            burst(engine, range(ROUNDS // 2, ROUNDS))
            assert engine.flush(20), engine.stats()
            assert SERVERS * ROUNDS == engine.stats().delivered
        paths = [p.path for p in remote.posts()]
        assert "/updates" in paths[:before], "batches were offered: bursts go out as batches"
        if change != "none":
            assert "/update" in paths[before:], "then single POSTs"
        if change == "withdrawn":
            assert "/updates" not in paths[before:]
        ids = [
            i["event_id"]
            for p in remote.posts()
            if p.path.endswith("/updates")
            for i in p.json()["updates"]
        ]
        assert all(ids), "every batch item carries its event id"
        check_order(received(remote))


@pytest.mark.parametrize("batches", [500, 0], ids=["batches", "no-batches"])
def test_the_reference_receiver_on_waitress(transport: str, batches: int) -> None:
    from lightd_sync.testing import LightdRemote

    with LightdRemote(batch_max=batches or None) as remote:
        engine = SyncEngine(remote.config(workers=1, queue_size=10_000, transport=transport))
        with engine:
            assert wait_until(lambda e=engine: e.health.healthy is True, timeout=10)
            assert (batches or 1) == engine.transport.max_batch()
            engine.update("warm", "ready")
            assert engine.flush(5)
            burst(engine)
            assert engine.flush(20), engine.stats()
            assert SERVERS * ROUNDS + 1 == engine.stats().delivered
        check_order([u for u in remote.updates if u["server"] != "warm"])
        latest = _servers(remote.url, remote.token)
    for s in range(SERVERS):  # the last round of each server is its latest state
        assert str(ROUNDS - 1) == latest[f"s{s}"], (s, latest.get(f"s{s}"))


def _servers(url: str, token: str) -> dict[str, Any]:
    """The reference receiver's latest state of each server: ``{server: data}``."""
    import urllib.request

    request = urllib.request.Request(
        f"{url}/servers?limit=1000", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        doc = json.loads(answer.read())
    rows = doc["servers"]
    if isinstance(rows, dict):
        return {k: v.get("data") for k, v in rows.items()}
    return {row["server"]: row.get("data") for row in rows}


def _https_behind_a_proxy() -> Iterator[tuple[str, str, str, Any]]:
    import trustme

    from .faults.conftest import server_tls
    from .faults.servers import FaultServer, ForwardProxy

    ca = trustme.CA()
    folder = Path(os.environ.get("TMPDIR", "/tmp"))
    bundle = folder / f"lightd-interop-ca-{os.getpid()}.pem"
    ca.cert_pem.write_to_path(str(bundle))
    try:
        for remote in serving(FaultServer(tls=server_tls(ca))):
            for proxy in serving(ForwardProxy()):
                yield remote.url, proxy.url, str(bundle), remote
    finally:
        bundle.unlink()


# waitress's own file_wrapper (its trigger pipe) is sometimes garbage-collected
# unclosed when the remote stops (seen once in CI, py312): waitress's race, as in
# test_http_server.py; what this test asserts is ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_connect_proxy_in_front_of_an_https_remote(transport: str) -> None:
    for url, proxy, bundle, remote in _https_behind_a_proxy():
        with deliver_all(url, 4, 5, transport=transport, proxy=proxy, ca_bundle=bundle, timeout=5):
            pass
        bodies = [r.json() for r in remote.posts()]
        check_order([b for b in bodies if b["server"] != "warm"], 4, 5)


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


def test_a_remote_that_answers_one_request_and_closes(transport: str) -> None:
    server = OneAndClose()
    try:
        with deliver_all(server.url, transport=transport):
            pass
        with server.lock:
            bodies = [b for b in server.bodies if b["server"] != "warm"]
    finally:
        server.stop()
    check_order(bodies)
    assert len(bodies) >= SERVERS * ROUNDS


def _benchmark_remotes() -> Any:
    """The benchmark's launchers (benchmarks/remotes.py: nginx, Express)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import remotes
    finally:
        sys.path.pop(0)
    return remotes


def _nginx(batches: int = 0) -> Iterator[str]:
    remotes = _benchmark_remotes()
    exe = remotes.find_nginx()
    if exe is None:
        if IN_CI:
            pytest.fail(".ci/run installs nginx: it must be there in CI")
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    server = remotes.NginxRemote(exe, batches=batches).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=[0, 500], ids=["no-batches", "batches"])
def nginx(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    for url in _nginx(request.param):
        yield url, request.param


def test_nginx(nginx: tuple[str, int], transport: str) -> None:
    """nginx keeps no record: the engine's counts must match, and the offer be taken or not."""
    url, batches = nginx
    with deliver_all(url, transport=transport) as engine:
        assert (batches or 1) == engine.transport.max_batch()


@pytest.fixture
def express() -> Iterator[str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if IN_CI:
            pytest.fail("node and npm are on this project's machines")
        pytest.skip("node and npm are needed for the Express remote")
    folder = _benchmark_remotes().install_express(npm)  # once, under a lock workers share
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
        assert 1 == engine.transport.max_batch(), "the Express remote offers no batches"
    import urllib.request

    request = urllib.request.Request(
        f"{express}/servers", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        latest = json.loads(answer.read())["servers"]
    for s in range(SERVERS):  # the last round of each server is its latest state
        assert str(ROUNDS - 1) == latest[f"s{s}"]["data"]
