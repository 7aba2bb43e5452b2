"""The receiver as the fleet's control room: nodes, operator, filters, batches, billing, metrics.

In-process apps served by the real WSGI server (waitress) on 127.0.0.1; the
process-level behaviour (heartbeats, alerts, SIGHUP) is in test_receiver_alerts.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import pytest

from lightd_sync import Status, Update
from lightd_sync._exceptions import ConfigError
from lightd_sync._server.nodes import parse_nodes
from lightd_sync.receiver import ReceiverApp, create_app, serve

from . import pg
from .receivers import OPENER

NODE_A = "lightd_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
NODE_B = "lightd_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
OPERATOR = "lightd_0000operator0000token0000xyz"
NODES = {"node-a": NODE_A, "node-b": NODE_B}

BILL = {
    "memory_gb": 0.5,
    "cpu_vcpus": 0.25,
    "storage_gb": 2.0,
    "egress_gb": 0.01,
    "duration_hours": 1.0,
    "estimated_cost": 0.0123,
}


def req(
    url: str,
    token: Optional[str],
    method: str = "GET",
    body: Any = None,
    headers: Optional[dict[str, str]] = None,
) -> tuple[int, Any, dict[str, str]]:
    """(status, decoded body (JSON, or text), headers)."""
    data = None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    sent.update(headers or {})
    request = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with OPENER.open(request, timeout=20) as response:
            raw, status, got = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            raw, status, got = exc.read(), exc.code, dict(exc.headers)
    kind = got.get("Content-Type", "")
    return status, (json.loads(raw) if kind.startswith("application/json") else raw.decode()), got


def billing(server: str, ts: int = 1767225600, **kw: Any) -> dict[str, Any]:
    return {"event": "billing", "server": server, **BILL, "timestamp": ts, **kw}


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "fleet.sqlite3")
    else:
        yield from pg.fresh_schema()


@pytest.fixture
def fleet(db: str) -> Iterator[tuple[ReceiverApp, str]]:
    app = create_app(None, db_path=db, nodes=NODES, operator_token=OPERATOR, rate=math.inf)
    with app, serve(app) as server:
        yield app, server.url


# -- the nodes file ------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "named", "problem"),
    [
        ({"bad name": NODE_A}, "bad name", "1 to 64 characters"),
        ({"x" * 65: NODE_A}, "x" * 65, "1 to 64 characters"),
        ({"": NODE_A}, "''", "1 to 64"),
        ({"n1": "short"}, "n1", "at least 20"),
        ({"n1": NODE_A + " x"}, "n1", "without whitespace"),
        ({"n1": 7}, "n1", "must be a string"),
        ({"n1": NODE_A, "n2": NODE_A}, "n2", "same token as node 'n1'"),
        ({"n1": OPERATOR}, "n1", "operator's token"),
        (["n1"], "nodes", "JSON object"),
    ],
)
def test_a_bad_nodes_file_names_the_node_and_the_problem_never_the_token(
    doc: Any, named: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_nodes(doc, operator=OPERATOR)
    message = str(caught.value)
    assert named in message and problem in message, message
    for secret in (NODE_A, OPERATOR, NODE_A[7:15], OPERATOR[7:15]):
        assert secret not in message


def test_nodes_need_the_operator_token() -> None:
    with pytest.raises(ConfigError, match="operator token: required"):
        create_app(None, nodes=NODES)


# -- who may do what --------------------------------------------------------------


def test_node_tokens_send_and_the_operator_reads(fleet: tuple[ReceiverApp, str]) -> None:
    _app, url = fleet
    body = {"event": "update", "server": "s1", "status": "installing"}
    assert req(f"{url}/update", NODE_A, "POST", body)[0] == 200
    assert req(f"{url}/health", NODE_B)[0] == 200
    for path in ("/servers", "/servers.csv", "/servers/s1", "/nodes", "/summary", "/metrics",
                 "/servers/s1/usage"):  # fmt: skip
        status, doc, _ = req(f"{url}{path}", NODE_A)
        assert status == 403, path
        assert "operator token" in doc["error"]
        assert req(f"{url}{path}", OPERATOR)[0] == 200, path
    status, doc, _ = req(f"{url}/update", OPERATOR, "POST", body)
    assert status == 403 and "node's token" in doc["error"]
    assert req(f"{url}/servers", "lightd_not_a_known_token_at_all")[0] == 401
    assert req(f"{url}/servers", None)[0] == 401
    _, doc, _ = req(f"{url}/servers/s1", OPERATOR)
    assert doc["node"] == "node-a"
    assert doc["history"][0]["node"] == "node-a"


def test_the_status_page_environ_key_reads_and_nothing_else_does(
    fleet: tuple[ReceiverApp, str],
) -> None:
    app, url = fleet
    answers: list[str] = []

    def start(status: str, headers: Any) -> None:
        answers.append(status)

    base = {"REQUEST_METHOD": "GET", "PATH_INFO": "/summary", "REMOTE_ADDR": "127.0.0.1"}
    body = b"".join(app({**base, "lightd_sync.operator": True}, start))
    assert answers[-1].startswith("200") and json.loads(body)["counts"]["ready"] == 0
    for value in ("true", 1, "1", None):  # only the very value True counts
        b"".join(app({**base, "lightd_sync.operator": value}, start))
        assert answers[-1].startswith("401"), value
    # Over HTTP a client can only set HTTP_ keys: a header of that name does nothing.
    status, _, _ = req(f"{url}/summary", None, headers={"lightd_sync.operator": "True"})
    assert status == 401


def test_without_nodes_the_single_token_sends_and_reads(tmp_path: Path) -> None:
    token = "lightd_ad2f7fc49ed640429c450e14ed07c8d5"
    with create_app(token, db_path=str(tmp_path / "r.db")) as app, serve(app) as server:
        body = {"event": "update", "server": "s1", "status": "ready"}
        assert req(f"{server.url}/update", token, "POST", body)[0] == 200
        status, doc, _ = req(f"{server.url}/servers", token)
        assert status == 200 and doc["servers"]["s1"]["node"] is None
        assert req(f"{server.url}/nodes", token)[1] == {"nodes": []}


# -- servers: fields and filters -----------------------------------------------------


def test_servers_carry_node_updated_error_usage_stuck(fleet: tuple[ReceiverApp, str]) -> None:
    app, url = fleet
    sends = [
        (NODE_A, {"event": "update", "server": "web-1", "status": "ready"}),
        (NODE_A, {"event": "update", "server": "web-2", "error": "timeout"}),
        (NODE_B, {"event": "update", "server": "db-1", "error": "failed", "data": None}),
        (NODE_B, {"event": "update", "server": "db-2", "error": "oom", "data": "killed"}),
        (NODE_B, {"event": "update", "server": "web-3", "status": "installing"}),
        (NODE_A, billing("web-1")),
    ]
    for token, body in sends:
        assert req(f"{url}/update", token, "POST", body)[0] == 200, body
    _status, doc, _ = req(f"{url}/servers", OPERATOR)
    servers = doc["servers"]
    assert list(servers) == ["db-1", "db-2", "web-1", "web-2", "web-3"]
    assert servers["web-2"]["status"] == "failed"
    assert (servers["web-2"]["error"], servers["web-2"]["data"]) == ("timeout", None)
    assert (servers["db-1"]["error"], servers["db-1"]["data"]) == ("failed", None)
    assert (servers["db-2"]["error"], servers["db-2"]["data"]) == ("oom", "killed")
    assert servers["web-1"]["node"] == "node-a" and servers["web-3"]["node"] == "node-b"
    assert servers["web-1"]["updated"].endswith("Z") and "T" in servers["web-1"]["updated"]
    assert servers["web-1"]["usage"] == {**BILL, "timestamp": 1767225600,
                                         "at": "2026-01-01T00:00:00.000Z"}  # fmt: skip
    assert servers["web-2"]["usage"] is None
    assert [s["stuck"] for s in servers.values()] == [False] * 5
    app.stuck_after = 0.001  # what --stuck-after says, read at each request
    time.sleep(0.01)
    _, doc, _ = req(f"{url}/servers?status=installing", OPERATOR)
    assert doc["servers"]["web-3"]["stuck"] is True
    assert req(f"{url}/summary", OPERATOR)[1]["stuck"] == 1


def test_filters_combine_and_a_bad_one_is_named(fleet: tuple[ReceiverApp, str]) -> None:
    _app, url = fleet
    for i in range(6):
        token = NODE_A if i % 2 else NODE_B
        body = {"event": "update", "server": f"{'web' if i < 4 else 'db'}-{i}",
                "status": ["ready", "failed", "installing"][i % 3]}  # fmt: skip
        assert req(f"{url}/update", token, "POST", body)[0] == 200

    def listed(query: str) -> list[str]:
        status, doc, _ = req(f"{url}/servers?{query}", OPERATOR)
        assert status == 200, doc
        return list(doc["servers"])

    assert listed("") == ["db-4", "db-5", "web-0", "web-1", "web-2", "web-3"]
    assert listed("status=failed") == ["db-4", "web-1"]
    assert listed("node=node-a") == ["db-5", "web-1", "web-3"]
    assert listed("prefix=web") == ["web-0", "web-1", "web-2", "web-3"]
    assert listed("prefix=web&node=node-a&status=failed") == ["web-1"]
    assert listed("prefix=zzz") == []
    assert listed("node=node-a&limit=2") == ["db-5", "web-1"]
    assert listed("node=node-a&limit=2&after=web-1") == ["web-3"]
    for query, named in [
        ("status=done", "status"),
        ("status=", "status"),
        ("node=no%20spaces", "node"),
        ("node=" + "n" * 65, "node"),
        ("prefix=", "prefix"),
        ("prefix=a%0Ab", "prefix"),
        ("limit=0", "limit"),
    ]:
        status, doc, _ = req(f"{url}/servers?{query}", OPERATOR)
        assert status == 400, query
        assert doc["error"].startswith(f"{named}:"), doc
        assert req(f"{url}/servers.csv?{query}", OPERATOR)[0] == 400
    status, text, headers = req(f"{url}/servers.csv?status=failed", OPERATOR)
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["server"] for r in rows] == ["db-4", "web-1"]
    assert rows[0]["node"] == "node-b" and rows[0]["status"] == "failed"


def test_csv_carries_usage_and_defuses_formulas(fleet: tuple[ReceiverApp, str]) -> None:
    _, url = fleet
    body = {"event": "update", "server": "=cmd|x", "error": "failed", "data": "@SUM(1)"}
    assert req(f"{url}/update", NODE_A, "POST", body)[0] == 200
    assert req(f"{url}/update", NODE_A, "POST", billing("=cmd|x"))[0] == 200
    _, text, _ = req(f"{url}/servers.csv", OPERATOR)
    (row,) = list(csv.DictReader(io.StringIO(text)))
    assert row["server"] == "'=cmd|x" and row["data"] == "'@SUM(1)"
    assert float(row["estimated_cost"]) == 0.0123
    assert row["usage_at"] == "2026-01-01T00:00:00.000Z"


# -- billing ----------------------------------------------------------------------


def test_billing_is_stored_read_and_never_changes_status(fleet: tuple[ReceiverApp, str]) -> None:
    _app, url = fleet
    assert req(f"{url}/update", NODE_A, "POST",
               {"event": "update", "server": "s1", "status": "ready"})[0] == 200  # fmt: skip
    now = int(time.time())
    for i in range(5):
        status, doc, _ = req(f"{url}/update", NODE_A, "POST", billing("s1", now - 3600 * (5 - i)))
        assert (status, doc) == (200, {"success": True})
    # A billing event of a server never seen stores usage, lists no status.
    assert req(f"{url}/update", NODE_B, "POST", billing("only-billed", now))[0] == 200
    _, doc, _ = req(f"{url}/servers/s1", OPERATOR)
    assert doc["status"] == "ready" and len(doc["history"]) == 1
    assert doc["usage"]["timestamp"] == now - 3600
    _, page1, _ = req(f"{url}/servers/s1/usage?limit=3", OPERATOR)
    assert [u["timestamp"] for u in page1["usage"]] == [now - 3600, now - 7200, now - 10800]
    assert page1["usage"][0]["node"] == "node-a" and page1["usage"][0]["at"].endswith("Z")
    _, page2, _ = req(f"{url}/servers/s1/usage?limit=3&before={page1['next']}", OPERATOR)
    assert [u["timestamp"] for u in page2["usage"]] == [now - 14400, now - 18000]
    assert page2["next"] is None
    assert req(f"{url}/servers/s1/usage?before=x", OPERATOR)[0] == 400
    assert req(f"{url}/servers/nobody/usage", OPERATOR)[1]["usage"] == []
    nodes = {n["name"]: n for n in req(f"{url}/nodes", OPERATOR)[1]["nodes"]}
    assert nodes["node-a"]["cost_24h"] == pytest.approx(5 * 0.0123)
    assert nodes["node-b"]["cost_24h"] == pytest.approx(0.0123)
    assert nodes["node-a"]["servers"] == 1
    _, text, _ = req(f"{url}/metrics", OPERATOR)
    assert 'lightd_sync_receiver_node_cost_24h{node="node-a"} 0.06' in text
    assert 'lightd_sync_receiver_node_memory_gb{node="node-a"} 0.5' in text
    assert "only-billed" not in req(f"{url}/servers", OPERATOR)[1]["servers"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"memory_gb": -1}, "memory_gb"),
        ({"cpu_vcpus": "1"}, "cpu_vcpus"),
        ({"storage_gb": None}, "storage_gb"),
        ({"egress_gb": True}, "egress_gb"),
        ({"duration_hours": 10**400}, "duration_hours"),
        ({"estimated_cost": [1]}, "estimated_cost"),
        ({"timestamp": 1.5}, "timestamp"),
        ({"timestamp": -1}, "timestamp"),
        ({"server": ""}, "server"),
    ],
)
def test_a_bad_billing_field_is_named(
    fleet: tuple[ReceiverApp, str], change: dict[str, Any], named: str
) -> None:
    _, url = fleet
    status, doc, _ = req(f"{url}/update", NODE_A, "POST", {**billing("s1"), **change})
    assert status == 400 and doc["error"].startswith(f"{named}:"), doc


@pytest.mark.parametrize("missing", ["memory_gb", "estimated_cost", "timestamp"])
def test_a_missing_billing_field_is_named(fleet: tuple[ReceiverApp, str], missing: str) -> None:
    _, url = fleet
    body = billing("s1")
    del body[missing]
    status, doc, _ = req(f"{url}/update", NODE_A, "POST", body)
    assert status == 400 and doc["error"].startswith(f"{missing}:"), doc


def test_lightds_exact_billing_bytes_are_accepted(fleet: tuple[ReceiverApp, str]) -> None:
    # As reqwest and serde send it: lower-case headers, fields in Lightd's order.
    app, url = fleet
    raw = (b'{"event":"billing","server":"my-server-001","memory_gb":0.5,"cpu_vcpus":0.25,'
           b'"storage_gb":2.0,"egress_gb":0.01,"duration_hours":1.0,"estimated_cost":0.0123,'
           b'"timestamp":1767225600}')  # fmt: skip
    request = urllib.request.Request(
        f"{url}/update",
        data=raw,
        method="POST",
        headers={
            "authorization": f"Bearer {NODE_A}",
            "content-type": "application/json",
            "accept": "*/*",
        },
    )
    with OPENER.open(request, timeout=10) as answer:
        assert answer.status == 200
    assert app.store.usage("my-server-001")[0]["estimated_cost"] == 0.0123


# -- batches --------------------------------------------------------------------------


def test_a_batch_is_validated_item_by_item_and_answered_per_item(
    fleet: tuple[ReceiverApp, str],
) -> None:
    app, url = fleet
    status, doc, _ = req(f"{url}/health", NODE_A)
    assert doc == {"status": 200, "endpoint": "active", "batch": {"max": 500}}
    eid = str(uuid.uuid4())
    items = [
        {"event": "update", "server": "b1", "status": "ready", "event_id": eid},
        {"event": "update", "server": "b2", "status": "done"},
        {"event": "update", "server": "b3", "error": "timeout", "event_id": "x" * 65},
        billing("b1"),
        {"event": "update", "server": "b4", "error": "failed", "data": "boom"},
        billing("b5", memory_gb=-2),
    ]
    status, doc, _ = req(f"{url}/updates", NODE_A, "POST", {"updates": items})
    assert status == 200
    assert doc["success"] is True
    results = doc["results"]
    assert [r["success"] for r in results] == [True, False, False, True, True, False]
    assert results[1]["error"].startswith("status:")
    assert results[2]["error"].startswith("event_id:")
    assert results[5]["error"].startswith("memory_gb:")
    assert set(app.store.latest()) == {"b1", "b4"}
    # The same again: stored ids acknowledged, stored once.
    again = [items[0], items[4]]
    assert req(f"{url}/updates", NODE_A, "POST", {"updates": again})[1] == {"success": True}
    assert len(app.store.history("b1")) == 1
    assert app.store.count() == 3  # b1, and b4 twice (no event id: nothing to de-duplicate)


def test_a_batch_that_breaks_the_rules_is_refused_whole(fleet: tuple[ReceiverApp, str]) -> None:
    app, url = fleet
    one = {"event": "update", "server": "s", "status": "ready"}
    for body, status, named in [
        ({"updates": []}, 400, "updates:"),
        ({"updates": "x"}, 400, "updates:"),
        ([one], 400, "body:"),
        ({"updates": [one, {**one, "status": "failed"}]}, 400, "updates: two"),
        ({"updates": [{**one, "server": f"s{i}"} for i in range(501)]}, 413, "updates: more"),
    ]:
        code, doc, _ = req(f"{url}/updates", NODE_A, "POST", body)
        assert code == status, body
        assert doc["error"].startswith(named), doc
    assert app.store.count() == 0


def test_a_batch_is_stored_in_one_transaction(
    fleet: tuple[ReceiverApp, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, url = fleet
    store = app.store
    real = type(store)._add_billing

    def fail_on_billing(self: Any, *args: Any) -> bool:
        raise store.errors[0]("disk full (simulated)")

    monkeypatch.setattr(type(store), "_add_billing", fail_on_billing)
    # The updates are stored first, then the billing event fails: none of it stays.
    items: list[Any] = [{"event": "update", "server": f"t{i}", "status": "ready"} for i in range(5)]
    items.append(billing("t0"))
    status, _doc, headers = req(f"{url}/updates", NODE_A, "POST", {"updates": items})
    assert status == 503 and headers["Retry-After"] == "1"
    monkeypatch.undo()
    assert type(store)._add_billing is real
    assert store.count() == 0  # none of it
    assert store.latest() == {}


def test_batches_can_be_turned_off(tmp_path: Path) -> None:
    token = "lightd_ad2f7fc49ed640429c450e14ed07c8d5"
    with create_app(token, batch_max=0) as app, serve(app) as server:
        assert req(f"{server.url}/health", token)[1] == {"status": 200, "endpoint": "active"}
        one = {"event": "update", "server": "s", "status": "ready"}
        assert req(f"{server.url}/updates", token, "POST", {"updates": [one]})[0] == 404


def test_a_node_resyncs_10000_servers_in_batches_without_a_429(db: str) -> None:
    app = create_app(None, db_path=db, nodes=NODES, operator_token=OPERATOR)  # default limits
    with app, serve(app) as server:
        for start in range(0, 10_000, 500):
            items = [
                {
                    "event": "update",
                    "server": f"srv-{i:05d}",
                    "status": "ready",
                    "event_id": str(uuid.uuid4()),
                }
                for i in range(start, start + 500)
            ]
            status, doc, _ = req(f"{server.url}/updates", NODE_A, "POST", {"updates": items})
            assert (status, doc) == (200, {"success": True})
        assert req(f"{server.url}/summary", OPERATOR)[1]["counts"]["ready"] == 10_000


def test_two_engines_of_400_single_updates_get_no_429(tmp_path: Path) -> None:
    token = "lightd_ad2f7fc49ed640429c450e14ed07c8d5"
    with create_app(token, db_path=str(tmp_path / "r.db")) as app, serve(app) as server:

        def send(i: int) -> int:
            body = {"event": "update", "server": f"s{i % 50}", "status": "ready"}
            return req(f"{server.url}/update", token, "POST", body)[0]

        with ThreadPoolExecutor(16, thread_name_prefix="test-burst") as pool:
            answers = list(pool.map(send, range(800)))
    assert answers.count(429) == 0
    assert answers == [200] * 800


# -- summary and metrics -----------------------------------------------------------


def test_summary_and_metrics(fleet: tuple[ReceiverApp, str]) -> None:
    _app, url = fleet
    for server, status in [("a", "ready"), ("b", "failed"), ("c", "installing")]:
        body = {"event": "update", "server": server, "status": status}
        assert req(f"{url}/update", NODE_A, "POST", body)[0] == 200
    req(f"{url}/update", NODE_A, "POST", {"event": "update", "server": "a"})  # refused
    status, doc, _ = req(f"{url}/summary", OPERATOR)
    assert doc == {
        "counts": {"installing": 1, "ready": 1, "failed": 1},
        "stuck": 0,
        "nodes": {"online": 1, "stale": 0, "never_seen": 1},
        "stale_after": 90.0,
        "stuck_after": 1800.0,
    }
    status, text, headers = req(f"{url}/metrics", OPERATOR)
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    for line in [
        'lightd_sync_receiver_updates_total{status="failed"} 1',
        'lightd_sync_receiver_node_updates_total{node="node-a"} 3',
        'lightd_sync_receiver_rejected_total{reason="invalid"} 1',
        'lightd_sync_receiver_nodes{state="never_seen"} 1',
        'lightd_sync_receiver_servers{status="installing"} 1',
        'lightd_sync_receiver_alerts{state="pending"} 0',
        'lightd_sync_receiver_alerts{state="failed"} 0',
    ]:
        assert line in text.splitlines(), line
    assert NODE_A not in text and OPERATOR not in text


def test_retention_prunes_status_and_billing_history(db: str) -> None:
    with create_app("lightd_ad2f7fc49ed640429c450e14ed07c8d5", db_path=db) as app:
        old = time.time() - 10 * 86400
        app.store.add(Update("s1", Status.INSTALLING), received_at=old)
        app.store.add(Update("s1", Status.READY))
        from lightd_sync import BillingEvent

        event = BillingEvent("s1", timestamp=int(old), **BILL)
        app.store.add_billing(event, received_at=old)
        assert app.store.retain(time.time() - 7 * 86400) == 2
        assert [h["status"] for h in app.store.history("s1")] == ["ready"]
        assert app.store.usage("s1") == []
        assert app.store.latest()["s1"]["status"] == "ready"
        for _ in range(3):  # the history count was fixed: --history still keeps the newest
            app.store.add(Update("s1", Status.READY))
        assert len(app.store.history("s1")) == 4


def test_billing_follows_history(tmp_path: Path) -> None:
    with create_app("lightd_ad2f7fc49ed640429c450e14ed07c8d5", history=3) as app:
        from lightd_sync import BillingEvent

        for ts in range(10):
            app.store.add_billing(BillingEvent("s1", timestamp=ts, **BILL))
        assert [u["timestamp"] for u in app.store.usage("s1")] == [9, 8, 7]


# -- what Lightd's client sends, byte for byte ---------------------------------------------


@pytest.mark.parametrize(
    ("raw", "error", "data"),
    [
        (b'{"event":"update","server":"s1","error":"timeout"}', "timeout", None),
        (b'{"event":"update","server":"s1","error":"failed"}', "failed", None),
        (
            b'{"event":"update","server":"s1","error":"failed","data":"image not found"}',
            "failed",
            "image not found",
        ),
        (
            b'{"event":"update","server":"s1","error":"disk quota exceeded","data":null}',
            "disk quota exceeded",
            None,
        ),
    ],
)
def test_every_error_form_lightd_documents_is_stored_and_shown(
    fleet: tuple[ReceiverApp, str], raw: bytes, error: str, data: Optional[str]
) -> None:
    _, url = fleet
    request = urllib.request.Request(
        f"{url}/update",
        data=raw,
        method="POST",
        headers={
            "authorization": f"Bearer {NODE_A}",
            "content-type": "application/json",
            "accept": "*/*",
        },
    )
    with OPENER.open(request, timeout=10) as answer:
        assert (answer.status, json.loads(answer.read())) == (200, {"success": True})
    _, doc, _ = req(f"{url}/servers/s1", OPERATOR)
    assert (doc["status"], doc["error"], doc["data"]) == ("failed", error, data)
    assert (doc["history"][-1]["error"], doc["history"][-1]["data"]) == (error, data)
    _, doc, _ = req(f"{url}/servers", OPERATOR)
    assert (doc["servers"]["s1"]["error"], doc["servers"]["s1"]["data"]) == (error, data)


# -- attacks and mistakes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "item",
    [
        None,
        7,
        "update",
        [],
        {"event": "update", "server": "s", "status": "ready", "event_id": 7},
        {"event": "update", "server": "s", "status": "ready", "event_id": "é"},
        {"event": "billing", "server": "s"},
        {"event": "bill", "server": "s"},
    ],
)
def test_a_hostile_batch_item_is_refused_alone(fleet: tuple[ReceiverApp, str], item: Any) -> None:
    app, url = fleet
    good = {"event": "update", "server": "good", "status": "ready"}
    status, doc, _ = req(f"{url}/updates", NODE_A, "POST", {"updates": [good, item]})
    assert status == 200
    assert doc["results"][0] == {"success": True}
    assert doc["results"][1]["success"] is False
    assert doc["results"][1]["error"].split(":")[0] in ("body", "event_id", "event", "memory_gb")
    assert list(app.store.latest()) == ["good"]


def test_deeply_nested_batches_and_huge_batches_are_refused(fleet: tuple[ReceiverApp, str]) -> None:
    app, url = fleet
    nested = b'{"updates":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    request = urllib.request.Request(
        f"{url}/updates",
        data=nested,
        method="POST",
        headers={"Authorization": f"Bearer {NODE_A}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        OPENER.open(request, timeout=10)
    with caught.value as answer:
        assert answer.code == 400
    assert app.store.count() == 0


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"webhooks": ["ftp://example"]}, "webhook"),
        ({"webhooks": [7]}, "webhook"),
        ({"batch_max": 10_001}, "batch_max"),
        ({"batch_max": -1}, "batch_max"),
        ({"stale_after": 0}, "stale_after"),
        ({"stuck_after": math.inf}, "stuck_after"),
        ({"retain_days": -1}, "retain_days"),
        ({"max_batch_body": 0}, "max_batch_body"),
        ({"operator_token": "short"}, "operator token"),
    ],
)
def test_bad_receiver_arguments_are_named(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_app(None, nodes=NODES, **{"operator_token": OPERATOR, **kwargs})
    assert str(caught.value).startswith(named), caught.value
    assert OPERATOR not in str(caught.value)


def test_no_token_reaches_the_audit_or_the_log(tmp_path: Path, logs: Any) -> None:
    audit = io.StringIO()
    app = create_app(None, nodes=NODES, operator_token=OPERATOR, audit=audit, rate=math.inf)
    with app, serve(app) as server:
        for token in (NODE_A, NODE_B, OPERATOR, NODE_A[:-1], OPERATOR.upper()):
            req(f"{server.url}/servers?node={token[:30]}", token)
            req(f"{server.url}/{token}", token, "POST", {"event": token})
        app.set_nodes({"node-z": "lightd_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"})
        req(f"{server.url}/{'lightd_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz'}", NODE_A)
    written = audit.getvalue() + "\n".join(r.getMessage() for r in logs.records)
    assert '"node":"node-a"' in written
    for secret in (NODE_A, NODE_B, OPERATOR, "lightd_zzzzzzzz", NODE_A[7:15], OPERATOR[10:18]):
        assert secret not in written and secret.upper() not in written, secret


def test_a_reload_that_shares_the_operators_token_is_refused(
    fleet: tuple[ReceiverApp, str],
) -> None:
    app, url = fleet
    with pytest.raises(ConfigError, match="operator's token") as caught:
        app.set_nodes({"node-x": OPERATOR})
    assert OPERATOR not in str(caught.value)
    assert app.node_names == ("node-a", "node-b")
    assert req(f"{url}/health", NODE_A)[0] == 200


def test_single_updates_arriving_together_are_all_stored_once(tmp_path: Path) -> None:
    # Group commit: threads share transactions; none is lost or stored twice.
    token = "lightd_ad2f7fc49ed640429c450e14ed07c8d5"
    with create_app(token, db_path=str(tmp_path / "r.db"), rate=math.inf) as app:
        with serve(app, threads=16) as server:

            def send(i: int) -> int:
                body = {"event": "update", "server": f"s{i % 37}", "status": "ready"}
                eid = {"X-Lightd-Event-Id": f"e-{i % 300}"}  # 100 of them twice
                return req(f"{server.url}/update", token, "POST", body, eid)[0]

            with ThreadPoolExecutor(24, thread_name_prefix="test-group") as pool:
                assert set(pool.map(send, range(400))) == {200}
        assert app.stored == len({(i % 37, i % 300) for i in range(400)})
        assert app.store.count() == app.stored


def test_close_cuts_a_webhook_post_in_flight_and_ends_the_alert_threads(tmp_path: Path) -> None:
    import socket
    import threading

    from lightd_sync._server.background import WEBHOOK_TIMEOUT

    with socket.socket() as black_hole:  # accepts in the backlog, never answers
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        url = f"http://127.0.0.1:{black_hole.getsockname()[1]}/hook"
        db = str(tmp_path / "r.db")
        app = create_app(None, nodes=NODES, operator_token=OPERATOR, webhooks=[url], db_path=db)
        with serve(app) as server:
            body = {"event": "update", "server": "s1", "error": "failed"}
            assert req(f"{server.url}/update", NODE_A, "POST", body)[0] == 200
            black_hole.settimeout(10)
            posting, _ = black_hole.accept()  # the POST is in flight
        with posting:
            started = time.monotonic()
            app.close()
            took = time.monotonic() - started
    assert took < WEBHOOK_TIMEOUT / 2, took  # cut, not waited for
    names = [t.name for t in threading.enumerate()]
    for name in ("alerts", "alerts-deadline", "receiver-ticker"):
        assert f"lightd-sync-{name}" not in names
    with create_app(None, nodes=NODES, operator_token=OPERATOR, db_path=db) as again:
        assert again.store.alert_counts()["pending"] == 1  # not lost: sent again later


def test_a_webhook_trickling_its_answer_is_cut_at_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket
    import threading

    from lightd_sync._server import background

    monkeypatch.setattr(background, "WEBHOOK_TIMEOUT", 0.5)
    times: dict[str, float] = {}
    cut = threading.Event()

    def trickle(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            times["asked"] = time.monotonic()
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
                time.sleep(0.1)  # the remote's pace: one byte every 100 ms
                try:
                    conn.sendall(bytes([byte]))
                except OSError:  # the receiver shut the connection down
                    break
            times["cut"] = time.monotonic()
            cut.set()

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        hook = threading.Thread(target=trickle, args=(listener,), name="test-trickle", daemon=True)
        hook.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        with create_app(None, nodes=NODES, operator_token=OPERATOR, webhooks=[url]) as app:
            with serve(app) as server:
                body = {"event": "update", "server": "s1", "error": "failed"}
                assert req(f"{server.url}/update", NODE_A, "POST", body)[0] == 200
                assert cut.wait(10), "the trickling POST was never cut"
        hook.join(5)
    # 44 bytes at 10 a second take 4.4 s: the POST was cut after about 0.5 s.
    assert times["cut"] - times["asked"] < 2.5, times


def test_create_app_from_env_reads_nodes_and_the_rest(tmp_path: Path) -> None:
    from lightd_sync.receiver import create_app_from_env

    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps(NODES))
    nodes.chmod(0o600)
    env = {
        "LIGHTD_RECEIVER_NODES": str(nodes),
        "LIGHTD_RECEIVER_OPERATOR_TOKEN": OPERATOR,
        "LIGHTD_RECEIVER_STALE_AFTER": "30",
        "LIGHTD_RECEIVER_STUCK_AFTER": "60",
        "LIGHTD_RECEIVER_BATCH_MAX": "0",
        "LIGHTD_RECEIVER_RETAIN_DAYS": "7",
        "LIGHTD_RECEIVER_WEBHOOKS": "http://127.0.0.1:9/a http://127.0.0.1:9/b",
    }
    with create_app_from_env(env) as app:
        assert app.node_names == ("node-a", "node-b")
        assert (app.stale_after, app.stuck_after, app.batch_max) == (30.0, 60.0, 0)
        assert app.retain_days == 7.0
        assert app.store.webhooks == ("http://127.0.0.1:9/a", "http://127.0.0.1:9/b")
    for bad, named in [
        ({**env, "LIGHTD_RECEIVER_OPERATOR_TOKEN": ""}, "LIGHTD_RECEIVER_NODES"),
        ({**env, "LIGHTD_RECEIVER_NODES": str(tmp_path / "none.json")}, "LIGHTD_RECEIVER_NODES"),
        ({**env, "LIGHTD_RECEIVER_BATCH_MAX": "x"}, "LIGHTD_RECEIVER_BATCH_MAX"),
        ({**env, "LIGHTD_RECEIVER_STALE_AFTER": "-1"}, "LIGHTD_RECEIVER_STALE_AFTER"),
    ]:
        with pytest.raises(ConfigError, match=named) as caught:
            create_app_from_env(bad)
        assert OPERATOR not in str(caught.value) and NODE_A not in str(caught.value)


def test_a_chunked_batch_is_taken_and_a_short_one_refused(fleet: tuple[ReceiverApp, str]) -> None:
    import http.client
    from urllib.parse import urlsplit

    app, url = fleet
    parts = urlsplit(url)
    items = [{"event": "update", "server": f"c{i}", "status": "ready"} for i in range(50)]
    body = json.dumps({"updates": items}).encode()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {NODE_A}", "Content-Type": "application/json"}
        chunks = iter([body[:100], body[100:1000], body[1000:]])
        conn.request("POST", "/updates", body=chunks, headers=headers, encode_chunked=True)
        answer = conn.getresponse()
        assert (answer.status, json.loads(answer.read())) == (200, {"success": True})
    finally:
        conn.close()
    assert len(app.store.latest()) == 50
    with socket_to(url) as sock:  # a body shorter than its Content-Length, then silence
        sock.sendall(
            b"POST /updates HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + NODE_A.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            + body[:500]
        )  # fmt: skip
        sock.shutdown(1)  # SHUT_WR: no more is coming
        answer_bytes = sock.recv(65536)
    assert answer_bytes == b"" or not answer_bytes.startswith(b"HTTP/1.1 200")
    assert len(app.store.latest()) == 50


def socket_to(url: str) -> Any:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=15)


def test_a_batch_of_10000_is_stored_in_chunks_in_one_transaction(db: str) -> None:
    app = create_app(None, db_path=db, nodes=NODES, operator_token=OPERATOR, batch_max=10_000)
    with app, serve(app) as server:
        items = [
            {
                "event": "update",
                "server": f"big-{i:05d}",
                "status": "installing",
                "event_id": str(uuid.uuid4()),
            }
            for i in range(10_000)
        ]
        status, doc, _ = req(f"{server.url}/updates", NODE_A, "POST", {"updates": items})
        assert (status, doc) == (200, {"success": True})
        assert app.store.count() == 10_000
        assert req(f"{server.url}/summary", OPERATOR)[1]["counts"]["installing"] == 10_000
        # The same again: every one a duplicate, stored once, acknowledged.
        status, doc, _ = req(f"{server.url}/updates", NODE_A, "POST", {"updates": items})
        assert (status, doc) == (200, {"success": True})
        assert app.store.count() == 10_000
