"""The receiver's stores, SQLite and PostgreSQL: ordering, duplicates, history, pages, migration."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightd_sync import Status, Update
from lightd_sync._server.app import open_store
from lightd_sync._server.store import MAX_CLOCK_AHEAD, ReceiverStore, order_key

from . import pg


def v7(at: float, seq: int = 0, rand: int = 0) -> str:
    """A UUIDv7 string whose time is *at* (seconds since the epoch)."""
    millis = int(at * 1000)
    value = (millis << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand
    return str(uuid.UUID(int=value))


def up(server: str, status: str, eid: Any = None) -> Update:
    return Update(server, Status(status), event_id=eid)


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "r.sqlite3")
    else:
        yield from pg.fresh_schema()


def opened(target: str, history: Any = 1000) -> Any:
    return open_store(target, history)


def test_order_key_rules() -> None:
    now = time.time()
    assert order_key(v7(now), now) == v7(now)
    assert order_key(v7(now).upper(), now) == v7(now)  # canonical form, so it compares
    assert order_key(v7(now + MAX_CLOCK_AHEAD - 1), now) is not None
    assert order_key(v7(now + MAX_CLOCK_AHEAD + 1), now) is None  # a clock far ahead
    assert order_key("ffffffff-ffff-7fff-bfff-ffffffffffff", now) is None
    assert order_key(str(uuid.uuid4()), now) is None  # not time-ordered
    assert order_key("retry-1", now) is None
    assert order_key(None, now) is None


def test_a_stale_update_arriving_late_does_not_replace_a_newer_one(target: str) -> None:
    now = time.time()
    with opened(target) as store:
        assert store.add(up("s1", "ready", v7(now, 2)))
        assert store.add(up("s1", "installing", v7(now, 1)))  # sent first, arrived last
        assert store.latest()["s1"]["status"] == "ready"
        assert [h["status"] for h in store.history("s1")] == ["ready", "installing"]


@pytest.mark.parametrize(
    "pin",
    [
        "ffffffff-ffff-7fff-bfff-ffffffffffff",  # the largest v7 id there is
        "far-future",  # a node whose clock runs an hour ahead
        "3d16afb4-c30a-45d6-8ffd-342ba8460e2b",  # a v4 id: not time-ordered
        "zzzz-not-a-uuid",  # sorts after every UUID as a string
    ],
)
def test_an_id_that_cannot_be_ordered_never_pins_latest(target: str, pin: str) -> None:
    now = time.time()
    if pin == "far-future":
        pin = v7(now + 3600)
    with opened(target) as store:
        store.add(up("s1", "failed", pin))
        store.add(up("s1", "installing", v7(now, 1)))
        assert store.latest()["s1"]["status"] == "installing"
        store.add(up("s1", "ready", v7(now, 2)))
        assert store.latest()["s1"]["status"] == "ready"
        store.add(up("s1", "installing", v7(now, 0)))  # the normal rule still holds after
        assert store.latest()["s1"]["status"] == "ready"


def test_a_clock_a_little_ahead_still_orders(target: str) -> None:
    ahead = time.time() + MAX_CLOCK_AHEAD - 60
    with opened(target) as store:
        store.add(up("s1", "ready", v7(ahead, 2)))
        store.add(up("s1", "installing", v7(ahead, 1)))
        assert store.latest()["s1"]["status"] == "ready"


def test_updates_without_ids_replace_in_arrival_order(target: str) -> None:
    with opened(target) as store:
        store.add(up("s1", "ready", v7(time.time())))
        store.add(up("s1", "failed"))
        assert store.latest()["s1"]["status"] == "failed"
        store.add(up("s1", "installing"))
        assert store.latest()["s1"]["status"] == "installing"


def test_an_event_id_is_stored_once(target: str) -> None:
    eid = v7(time.time())
    with opened(target) as store:
        assert store.add(up("s1", "ready", eid)) is True
        assert store.add(up("s1", "ready", eid)) is False
        assert store.add(up("s2", "ready", eid)) is True  # ids are per server
        assert store.count() == 2


def test_history_keeps_the_newest_n_per_server(target: str) -> None:
    now = time.time()
    with opened(target, history=5) as store:
        for i in range(12):
            store.add(up("s1", "installing" if i % 2 else "ready", v7(now, i)))
        store.add(up("s2", "ready"))
        events = [h["event_id"] for h in store.history("s1")]
        assert events == [v7(now, i) for i in range(7, 12)]
        assert store.count() == 6
        assert len(store.history("s2")) == 1


def test_history_none_keeps_everything(target: str) -> None:
    with opened(target, history=None) as store:
        for _ in range(30):
            store.add(up("s1", "ready"))
        assert store.count() == 30


def test_latest_comes_a_page_at_a_time_in_id_order(target: str) -> None:
    names = [f"node-{i:03d}" for i in range(25)] + ["Zeta", "alpha", "é-accent"]
    with opened(target) as store:
        for name in reversed(names):
            store.add(up(name, "ready"))
        seen: list[str] = []
        after = ""
        while page := store.latest_page(after, 10):
            assert len(page) <= 10
            seen += list(page)
            after = seen[-1]
        assert seen == sorted(names)  # by code point: "Z" < "a" < "n" < "é"
        assert list(store.latest()) == sorted(names)


OLD_SCHEMA = """
CREATE TABLE updates (id INTEGER PRIMARY KEY, received_at REAL NOT NULL, server TEXT NOT NULL,
    status TEXT NOT NULL, error TEXT, data TEXT, event_id TEXT);
CREATE INDEX updates_by_server ON updates (server, id);
CREATE UNIQUE INDEX updates_by_event ON updates (server, event_id);
CREATE TABLE latest (server TEXT PRIMARY KEY, status TEXT NOT NULL, data TEXT,
    updated_at REAL NOT NULL, event_id TEXT);
"""


def test_a_0_1_0_sqlite_file_is_migrated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    pinned = "ffffffff-ffff-7fff-bfff-ffffffffffff"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
        for i in range(3):
            conn.execute(
                "INSERT INTO updates (received_at, server, status, event_id)"
                " VALUES (1, 's1', 'ready', ?)",
                (f"{pinned[:-1]}{i}",),
            )
        conn.execute("INSERT INTO latest VALUES ('s1', 'failed', 'boom', 1, ?)", (pinned,))
    conn.close()
    with ReceiverStore(path, history=4) as store:
        assert store.latest()["s1"]["status"] == "failed"
        store.add(up("s1", "ready", v7(time.time())))  # the pinned id no longer pins
        assert store.latest()["s1"]["status"] == "ready"
        store.add(up("s1", "installing"))
        assert len(store.history("s1")) == 4  # the 3 old rows were counted
    with ReceiverStore(path) as store:  # and opening it again changes nothing
        assert store.count() == 4


ORDERS = st.permutations(list(range(8)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(order=ORDERS)
def test_whatever_the_arrival_order_the_newest_id_wins(order: list[int]) -> None:
    now = time.time()
    statuses = ["installing", "ready", "failed"]
    with ReceiverStore(None) as store:
        for i in order:
            store.add(up("s1", statuses[i % 3], v7(now, i)))
        assert store.latest()["s1"]["event_id"] == v7(now, 7)
        assert store.latest()["s1"]["status"] == statuses[7 % 3]


def test_postgres_without_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from lightd_sync import ConfigError
    from lightd_sync._server.postgres import PostgresStore

    real = builtins.__import__

    def no_psycopg(name: str, *args: Any, **kw: Any) -> Any:
        if name.startswith("psycopg"):
            raise ImportError(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_psycopg)
    with pytest.raises(ConfigError, match=r"lightd-sync\[postgres\]"):
        PostgresStore("postgresql://u:secret@127.0.0.1:1/db")


def test_a_postgres_password_is_never_shown() -> None:
    from lightd_sync._server.postgres import redact_url

    assert redact_url("postgresql://u:s3cret@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert "s3cret" not in redact_url("postgres://u:s3cret@h/db?x=1")


def test_the_server_side_never_imports_the_client_side() -> None:
    # Dependencies point one way: the server may use the shared model, the shared
    # HTTP deadline (its webhook POSTs) and the quiet thread start (_threads), never
    # the engine or the transports.
    import ast

    import lightd_sync

    root = Path(lightd_sync.__file__).parent
    allowed = {"_auth", "_deadline", "_exceptions", "_forksafe", "_logutil", "_model", "_server"}
    allowed.add("_threads")
    for path in [root / "receiver.py", *sorted((root / "_server").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level > 0 and node.module:
                top = node.module.split(".")[0]
                if node.level == 1 and path.parent.name == "_server":
                    continue  # a sibling in _server
                assert top in allowed, f"{path.name} imports {node.module}"
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                assert not any(n.startswith("lightd_sync") for n in names), path.name


def test_a_0_2_dev_database_is_migrated_on_open(target: str) -> None:
    # The schema before nodes, billing and alerts: latest had order_key and kept.
    statements = [s for s in OLD_SCHEMA.split(";") if s.strip()] + [
        "ALTER TABLE latest ADD COLUMN order_key TEXT",
        "ALTER TABLE latest ADD COLUMN kept BIGINT NOT NULL DEFAULT 0",
        "INSERT INTO updates (received_at, server, status, error, data) VALUES"
        " (5, 's1', 'failed', 'failed', 'boom')",
        "INSERT INTO latest (server, status, data, updated_at, kept) VALUES"
        " ('s1', 'failed', 'boom', 5, 1)",
    ]
    if target.startswith("postgresql"):
        psycopg = pytest.importorskip("psycopg")
        with psycopg.connect(target, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.replace("INTEGER PRIMARY KEY", "BIGSERIAL PRIMARY KEY"))
    else:
        with sqlite3.connect(target) as conn:
            for statement in statements:
                conn.execute(statement)
        conn.close()
    with opened(target) as store:
        state = store.latest()["s1"]
        assert (state["status"], state["error"], state["data"]) == ("failed", "failed", "boom")
        assert (state["node"], state["since"], state["usage"]) == (None, 5, None)
        assert store.history("s1")[0]["node"] is None
        store.add(up("s1", "ready"), node="node-a")
        state = store.latest()["s1"]
        assert (state["status"], state["error"], state["node"]) == ("ready", None, "node-a")
        assert len(store.history("s1")) == 2
    with opened(target) as store:  # opening again changes nothing
        assert store.count() == 2


@pytest.mark.parametrize("prefix", ["a", "ab", "a\ud7ff", "\U0010ffff", "é", "z"])
def test_a_prefix_lists_exactly_the_ids_that_start_with_it(target: str, prefix: str) -> None:
    names = ["a", "ab", "abc", "a\ud7ff", "a\ud7ffx", "a\ue000", "b", "é", "éa", "ê",
             "\U0010ffff", "\U0010ffffa", "z", "za"]  # fmt: skip
    names = [n for n in names if n.isprintable()]
    with opened(target) as store:
        for name in names:
            store.add(up(name, "ready"))
        listed, after = [], ""
        while page := store.latest_page(after, 2, prefix=prefix):
            listed += list(page)
            after = listed[-1]
        assert listed == sorted(n for n in names if n.startswith(prefix))
