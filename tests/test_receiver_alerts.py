"""The receiver process as operators run it: heartbeats, alerts to a real webhook, SIGHUP, the CLI.

Every receiver here is ``lightd-sync receiver`` in a subprocess; every webhook
a real HTTP server on 127.0.0.1 that the tests take down and bring back.
Waits are on conditions, each bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from . import pg
from .receivers import Process, child_env, receiver
from .test_receiver_fleet import NODE_A, NODE_B, OPERATOR, req

NODES = {"node-a": NODE_A, "node-b": NODE_B}


class Webhook:
    """A webhook endpoint recording the JSON it is POSTed; it can go down and come back."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        # Guards received: handler threads append, the test reads.
        self.lock = threading.Lock()
        self.server: Optional[ThreadingHTTPServer] = None
        self.thread: Optional[threading.Thread] = None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/secret-path"

    def up(self) -> Webhook:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                doc = json.loads(self.rfile.read(length))
                with hook.lock:
                    hook.received.append(doc)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        deadline = time.monotonic() + 10
        while True:
            try:
                self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
                break
            except OSError:
                assert time.monotonic() < deadline, "the webhook's port stayed taken"
                time.sleep(0.05)
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), name="test-webhook", daemon=True
        )
        self.thread.start()
        return self

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            assert self.thread is not None
            self.thread.join(5)
            self.server = None

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [a for a in self.received if a["kind"] == kind]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    try:
        yield hook
    finally:
        hook.down()


def until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.05)


def files(tmp_path: Path, nodes: dict[str, str] = NODES) -> tuple[Path, Path]:
    nodes_file = tmp_path / "nodes.json"
    nodes_file.write_text(json.dumps(nodes))
    nodes_file.chmod(0o600)
    operator = tmp_path / "operator.token"
    operator.write_text(OPERATOR + "\n")
    operator.chmod(0o600)
    return nodes_file, operator


def fleet_receiver(tmp_path: Path, *args: str) -> Process:
    nodes_file, operator = files(tmp_path)
    return receiver(
        "--nodes", str(nodes_file), "--operator-token-file", str(operator), "--no-audit", *args
    )


def nodes_of(url: str) -> dict[str, dict[str, Any]]:
    status, doc, _ = req(f"{url}/nodes", OPERATOR)
    assert status == 200, doc
    return {n["name"]: n for n in doc["nodes"]}


def pending(url: str) -> int:
    _, text, _ = req(f"{url}/metrics", OPERATOR)
    for line in text.splitlines():
        if line.startswith('lightd_sync_receiver_alerts{state="pending"}'):
            return int(line.split()[-1])
    raise AssertionError(text)


def secrets_in(text: str) -> list[str]:
    return [s for s in (NODE_A, NODE_B, OPERATOR, NODE_A[7:15], OPERATOR[7:15]) if s in text]


# -- heartbeats ------------------------------------------------------------------------


def test_heartbeats_online_then_stale_then_online_with_alerts(
    tmp_path: Path, webhook: Webhook
) -> None:
    webhook.up()
    db = tmp_path / "fleet.sqlite3"
    with fleet_receiver(
        tmp_path, "--db", str(db), "--stale-after", "1", "--webhook", webhook.url
    ) as proc:
        nodes = nodes_of(proc.url)
        assert {n: v["state"] for n, v in nodes.items()} == {
            "node-a": "never_seen",
            "node-b": "never_seen",
        }
        assert nodes["node-a"]["last_seen"] is None
        assert req(f"{proc.url}/health", NODE_A)[0] == 200
        nodes = nodes_of(proc.url)
        assert nodes["node-a"]["state"] == "online"
        assert nodes["node-a"]["last_seen"].endswith("Z")
        assert nodes["node-b"]["state"] == "never_seen"
        assert req(f"{proc.url}/summary", OPERATOR)[1]["nodes"] == {
            "online": 1, "stale": 0, "never_seen": 1}  # fmt: skip
        until(lambda: nodes_of(proc.url)["node-a"]["state"] == "stale", 10, "node-a stale")
        (stale,) = until(lambda: webhook.of_kind("node_stale"), 20, "node_stale alert")
        assert stale["node"] == "node-a" and stale["server"] is None
        assert "node-a" in stale["text"]
        assert req(f"{proc.url}/health", NODE_A)[0] == 200
        assert nodes_of(proc.url)["node-a"]["state"] == "online"
        (online,) = until(lambda: webhook.of_kind("node_online"), 20, "node_online alert")
        assert online["node"] == "node-a" and online["id"] != stale["id"]
        assert not webhook.of_kind("node_stale")[1:]  # once, not at every tick
    assert proc.proc.returncode == 0
    assert secrets_in(proc.text()) == []


# -- alerts -------------------------------------------------------------------------------


def test_alerts_survive_a_dead_webhook_and_a_restart(tmp_path: Path, webhook: Webhook) -> None:
    db = tmp_path / "fleet.sqlite3"
    args = ("--db", str(db), "--webhook", webhook.url)  # the webhook is down
    failed = {"event": "update", "server": "web-7", "error": "failed", "data": "image not found"}
    with fleet_receiver(tmp_path, *args) as first:
        started = time.monotonic()
        assert req(f"{first.url}/update", NODE_A, "POST", failed)[0] == 200
        assert time.monotonic() - started < 2
        until(lambda: pending(first.url) == 1, 10, "one pending alert")
    assert "2 updates stored" not in first.text()
    assert "(1 update stored)" in first.text()
    with fleet_receiver(tmp_path, *args) as second:
        assert pending(second.url) == 1  # kept in the database
        webhook.up()
        (alert,) = until(lambda: webhook.of_kind("server_failed"), 30, "the alert after restart")
        assert set(alert) == {"id", "kind", "node", "server", "status", "data", "at", "text"}
        assert (alert["node"], alert["server"], alert["status"], alert["data"]) == (
            "node-a", "web-7", "failed", "image not found")  # fmt: skip
        assert alert["at"].endswith("Z")
        assert alert["text"] == "Server web-7 failed on node node-a: image not found"
        until(lambda: pending(second.url) == 0, 10, "nothing pending")
        ready = {"event": "update", "server": "web-7", "status": "ready"}
        assert req(f"{second.url}/update", NODE_B, "POST", ready)[0] == 200
        (back,) = until(lambda: webhook.of_kind("server_recovered"), 20, "server_recovered")
        assert back["server"] == "web-7" and back["node"] == "node-b"
        # Failed again while failed: no new alert; a timeout error is one.
        assert req(f"{second.url}/update", NODE_A, "POST", failed)[0] == 200
        assert req(f"{second.url}/update", NODE_A, "POST", failed)[0] == 200
        until(lambda: len(webhook.of_kind("server_failed")) == 2, 20, "second server_failed")
        until(lambda: pending(second.url) == 0, 10, "nothing pending")
        bill = {"event": "billing", "server": "web-7", "memory_gb": 1, "cpu_vcpus": 1,
                "storage_gb": 1, "egress_gb": 0, "duration_hours": 1, "estimated_cost": 0.5,
                "timestamp": 1767225600}  # fmt: skip
        assert req(f"{second.url}/update", NODE_A, "POST", bill)[0] == 200
    # The stop line counts what this run stored, not the whole database.
    assert "(3 updates, 1 billing event stored)" in second.text(), second.text()
    assert "secret-path" not in first.text() + second.text()
    assert len(webhook.of_kind("server_failed")) == 2


def test_a_webhook_that_never_answers_never_slows_ingest(tmp_path: Path) -> None:
    with socket.socket() as black_hole:  # accepts in the backlog, never answers
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(64)
        url = f"http://127.0.0.1:{black_hole.getsockname()[1]}/hook"
        with fleet_receiver(tmp_path, "--webhook", url) as proc:
            slowest = 0.0
            for i in range(40):
                body = {"event": "update", "server": f"s{i}", "error": "failed"}
                started = time.monotonic()
                assert req(f"{proc.url}/update", NODE_A, "POST", body)[0] == 200
                slowest = max(slowest, time.monotonic() - started)
            assert slowest < 1.0, slowest
            assert pending(proc.url) == 40
        assert proc.proc.returncode == 0


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from pg.fresh_schema()


def test_two_receivers_on_one_postgres_send_each_alert_once(
    tmp_path: Path, webhook: Webhook, pg_url: str
) -> None:
    url = pg_url
    webhook.up()
    args = ("--db", url, "--webhook", webhook.url, "--stale-after", "1")
    with fleet_receiver(tmp_path, *args) as a, fleet_receiver(tmp_path, *args) as b:
        for i in range(10):
            body = {"event": "update", "server": f"s{i}", "error": "timeout"}
            assert req(f"{(a, b)[i % 2].url}/update", NODE_A, "POST", body)[0] == 200
        until(lambda: len(webhook.of_kind("server_failed")) == 10, 30, "10 alerts")
        until(lambda: pending(a.url) == 0 and pending(b.url) == 0, 10, "nothing pending")
        until(lambda: webhook.of_kind("node_stale"), 20, "node_stale")
        time.sleep(1.0)  # ticks of both receivers (0.25 s, alerts 0.5 s): nothing is sent twice
        alerts = webhook.of_kind("server_failed")
        assert sorted(x["server"] for x in alerts) == [f"s{i}" for i in range(10)]
        assert len({x["id"] for x in alerts}) == 10
        assert len(webhook.of_kind("node_stale")) == 1
        assert webhook.of_kind("server_failed")[0]["text"].startswith("Server s")


# -- nodes: reload, refusal, the listening line ------------------------------------------------


def test_sighup_reloads_the_nodes_and_a_bad_file_keeps_the_old_set(tmp_path: Path) -> None:
    with fleet_receiver(tmp_path) as proc:
        health = f"{proc.url}/health"
        assert req(health, NODE_A)[0] == 200
        new_token = "lightd_cccccccccccccccccccccccccccccccc"
        (tmp_path / "nodes.json").write_text(json.dumps({"node-c": new_token, "node-a": NODE_A}))
        os.killpg(proc.proc.pid, signal.SIGHUP)
        proc.wait_for(r"SIGHUP: 2 nodes from")
        assert req(health, new_token)[0] == 200
        assert req(health, NODE_B)[0] == 401  # revoked without a restart
        assert set(nodes_of(proc.url)) == {"node-a", "node-c"}
        (tmp_path / "nodes.json").write_text(json.dumps({"node-c": new_token, "node-d": new_token}))
        os.killpg(proc.proc.pid, signal.SIGHUP)
        line = proc.wait_for(r"kept the previous nodes")
        assert "node-d" in line and "same token" in line
        assert req(health, new_token)[0] == 200
        assert req(health, NODE_A)[0] == 200
    assert proc.proc.returncode == 0
    assert secrets_in(proc.text()) == [] and new_token not in proc.text()


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ({"node a": NODE_A}, "node 'node a': a name is 1 to 64 characters"),
        ({"n1": NODE_A, "n2": NODE_A}, "node 'n2' has the same token as node 'n1'"),
        ({"n1": "lightd_short"}, "node 'n1': the token has 12 characters"),
        ({"n1": OPERATOR}, "node 'n1' has the operator's token"),
    ],
)
def test_a_bad_nodes_file_is_refused_at_start(
    tmp_path: Path, nodes: dict[str, str], message: str
) -> None:
    nodes_file, operator = files(tmp_path, nodes)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightd_sync",
            "receiver",
            "--port",
            "0",
            "--nodes",
            str(nodes_file),
            "--operator-token-file",
            str(operator),
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert secrets_in(done.stderr + done.stdout) == []
    assert "lightd_short" not in done.stderr


def test_nodes_without_an_operator_token_are_refused(tmp_path: Path) -> None:
    nodes_file, _ = files(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightd_sync",
            "receiver",
            "--port",
            "0",
            "--nodes",
            str(nodes_file),
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--nodes needs the operator token" in done.stderr


def test_the_listening_line_tells_the_truth_about_all_addresses() -> None:
    with receiver("--host", "0.0.0.0", "--no-audit") as proc:
        line = proc.text()
        assert "listening on http://0.0.0.0:" in line
        assert "every IPv4 address; from this machine http://127.0.0.1:" in line
        assert req(f"{proc.url}/health", "lightd_ad2f7fc49ed640429c450e14ed07c8d5")[0] == 200
    with receiver("--host", "127.0.0.1", "--no-audit") as proc:
        assert "listening on http://127.0.0.1:" in proc.text()


def test_gunicorn_with_a_missing_token_file_says_so_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("gunicorn")
    from .test_receiver_http import gunicorn_argv

    env = child_env(LIGHTD_RECEIVER_TOKEN_FILE=str(tmp_path / "missing.token"))
    done = subprocess.run(
        gunicorn_argv("--workers", "1"),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        cwd=str(tmp_path),
    )
    assert done.returncode != 0
    assert "lightd-sync receiver: $LIGHTD_RECEIVER_TOKEN_FILE: cannot read" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_every_webhook_gets_the_alert_with_one_id(tmp_path: Path) -> None:
    from lightd_sync.receiver import create_app, serve

    first, second = Webhook().up(), Webhook().up()
    try:
        app = create_app(
            None, nodes=NODES, operator_token=OPERATOR, webhooks=[first.url, second.url]
        )
        with app, serve(app) as server:
            body = {"event": "update", "server": "s1", "error": "failed", "data": "boom"}
            assert req(f"{server.url}/update", NODE_A, "POST", body)[0] == 200
            (a,) = until(lambda: first.of_kind("server_failed"), 20, "first webhook")
            (b,) = until(lambda: second.of_kind("server_failed"), 20, "second webhook")
            assert a == b
            until(lambda: app.store.alert_counts() == {"pending": 0, "sent": 2, "failed": 0})
    finally:
        first.down()
        second.down()


def test_an_alert_is_given_up_after_its_attempts(tmp_path: Path) -> None:
    from lightd_sync._server.queries import MAX_ALERT_ATTEMPTS, backoff
    from lightd_sync._server.store import ReceiverStore

    assert [backoff(n) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff(40) == 300.0
    with ReceiverStore(tmp_path / "r.db") as store:
        store.webhooks = ("http://127.0.0.1:9/hook",)
        store.touch_nodes({"n1": 1.0})
        assert store.mark_stale(2.0, ["n1"]) == ["n1"]
        assert store.mark_stale(2.0, ["n1"]) == []  # once
        now = time.time()
        for attempt in range(MAX_ALERT_ATTEMPTS):
            (alert,) = store.claim_alerts(now + 10**6, lease=60)
            assert store.claim_alerts(now + 10**6, lease=60) == []  # leased to the first
            assert alert["kind"] == "node_stale" and alert["attempts"] == attempt
            state = store.finish_alert(alert, False, now)
            assert state == ("failed" if attempt == MAX_ALERT_ATTEMPTS - 1 else "pending")
        assert store.alert_counts() == {"pending": 0, "sent": 0, "failed": 1}
        assert store.claim_alerts(now + 10**6, lease=60) == []


def test_retain_days_prunes_in_the_background(tmp_path: Path) -> None:
    from lightd_sync import Status, Update
    from lightd_sync.receiver import create_app

    token = "lightd_ad2f7fc49ed640429c450e14ed07c8d5"
    db = tmp_path / "r.db"
    with create_app(token, db_path=str(db)) as app:
        app.store.add(Update("s1", Status.INSTALLING), received_at=time.time() - 3 * 86400)
        app.store.add(Update("s1", Status.READY))
    with create_app(token, db_path=str(db), retain_days=2) as app:
        until(lambda: len(app.store.history("s1")) == 1, 10, "the old update pruned")
        assert app.store.history("s1")[0]["status"] == "ready"
