"""
What the receiver's stores share: the schema, the statements and the ordering rule.

Both stores (:class:`~lightd_sync.receiver.ReceiverStore` on SQLite, and
:class:`~lightd_sync._server.postgres.PostgresStore`)
keep the same two tables and decide the same things in SQL, inside the
transaction that stores an update:

- an update is stored once per server and event id (a retry, a resync);
- it becomes its server's latest state unless the state stored is newer, which
  is known only when both carry an *order key*: a time-ordered (UUIDv7) event
  id whose time is at most :data:`MAX_CLOCK_AHEAD` seconds past the
  receiver's clock. Any other id (not time-ordered, or from a clock running
  ahead) has no key, so it never pins the latest state;
- the history of each server keeps its newest *history* updates.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from .._model import BILLING_FIELDS

__all__ = [
    "DEFAULT_HISTORY",
    "MAX_CLOCK_AHEAD",
    "check_history",
    "history_rows",
    "latest_row",
    "order_key",
    "tables",
    "usage_rows",
]

#: Updates kept per server unless told otherwise.
DEFAULT_HISTORY = 1000
#: Seconds an event id's time may lie past the receiver's clock and still order updates.
MAX_CLOCK_AHEAD = 300.0
#: A UUID of version 7 and the RFC 4122 variant, in its canonical form (any case).
_UUID7 = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
)

_TABLES = """
CREATE TABLE IF NOT EXISTS updates (
    id {serial} PRIMARY KEY,
    received_at {real} NOT NULL,
    server TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    data TEXT,
    event_id TEXT
);
CREATE INDEX IF NOT EXISTS updates_by_server ON updates (server, id);
-- One row per event id and server (NULLs never collide): retries are stored once.
CREATE UNIQUE INDEX IF NOT EXISTS updates_by_event ON updates (server, event_id);
CREATE INDEX IF NOT EXISTS updates_by_time ON updates (received_at);
CREATE TABLE IF NOT EXISTS latest (
    server TEXT{collate} PRIMARY KEY,
    status TEXT NOT NULL,
    data TEXT,
    updated_at {real} NOT NULL,
    event_id TEXT
);
-- Billing events (Lightd v2): every one, and the latest of each server.
CREATE TABLE IF NOT EXISTS billing (
    id {serial} PRIMARY KEY,
    received_at {real} NOT NULL,
    server TEXT NOT NULL,
    node TEXT,
    ts BIGINT NOT NULL,
    memory_gb {real} NOT NULL,
    cpu_vcpus {real} NOT NULL,
    storage_gb {real} NOT NULL,
    egress_gb {real} NOT NULL,
    duration_hours {real} NOT NULL,
    estimated_cost {real} NOT NULL,
    event_id TEXT
);
CREATE INDEX IF NOT EXISTS billing_by_server ON billing (server, id);
CREATE UNIQUE INDEX IF NOT EXISTS billing_by_event ON billing (server, event_id);
CREATE INDEX IF NOT EXISTS billing_by_time ON billing (received_at);
CREATE INDEX IF NOT EXISTS billing_by_ts ON billing (ts);
CREATE TABLE IF NOT EXISTS usage_latest (
    server TEXT{collate} PRIMARY KEY,
    node TEXT,
    ts BIGINT NOT NULL,
    memory_gb {real} NOT NULL,
    cpu_vcpus {real} NOT NULL,
    storage_gb {real} NOT NULL,
    egress_gb {real} NOT NULL,
    duration_hours {real} NOT NULL,
    estimated_cost {real} NOT NULL
);
-- Nodes heard from: when last, and the state their last alert told ('online', 'stale').
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT{collate} PRIMARY KEY,
    last_seen {real} NOT NULL,
    state TEXT NOT NULL
);
-- Alerts to POST, one row per alert and webhook, kept until sent or given up.
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT NOT NULL,
    url TEXT NOT NULL,
    kind TEXT NOT NULL,
    node TEXT,
    server TEXT,
    status TEXT,
    data TEXT,
    at_ts {real} NOT NULL,
    message TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at {real} NOT NULL,
    lease_until {real} NOT NULL DEFAULT 0,
    PRIMARY KEY (id, url)
);
CREATE INDEX IF NOT EXISTS alerts_due ON alerts (state, next_at)
"""
# ``latest`` has no index on status or node: each would be rewritten at every
# update of a server (a random page each), and cost batches half their speed;
# a filter scans 100,000 servers in about 15 ms instead.
#: Columns of ``latest`` added after 0.1.0, with their definitions.
NEW_COLUMNS = {
    "order_key": "TEXT",
    "kept": "BIGINT NOT NULL DEFAULT 0",
    "error": "TEXT",
    "node": "TEXT",
    "since": "DOUBLE PRECISION",
}
#: Columns of ``updates`` added after 0.1.0.
NEW_UPDATE_COLUMNS = {"node": "TEXT"}

# Every statement, with ? placeholders (PostgreSQL's store swaps in %s).
_NEWER = (
    "(excluded.order_key IS NULL OR latest.order_key IS NULL"
    " OR excluded.order_key >= latest.order_key)"
)
#: Count the update in its server's history, and make it the server's latest
#: state unless the stored one is known to be newer (one statement: ingest's
#: cost is its statements). ``since`` is when the server took its status.
_UPSERT_HEAD = (
    "INSERT INTO latest (server, status, data, error, node, updated_at, since, event_id,"
    " order_key, kept) VALUES "
)
_UPSERT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
_UPSERT_TAIL = f"""
ON CONFLICT (server) DO UPDATE SET
    kept = latest.kept + 1,
    status = CASE WHEN {_NEWER} THEN excluded.status ELSE latest.status END,
    data = CASE WHEN {_NEWER} THEN excluded.data ELSE latest.data END,
    error = CASE WHEN {_NEWER} THEN excluded.error ELSE latest.error END,
    node = CASE WHEN {_NEWER} THEN COALESCE(excluded.node, latest.node) ELSE latest.node END,
    updated_at = CASE WHEN {_NEWER} THEN excluded.updated_at ELSE latest.updated_at END,
    since = CASE WHEN {_NEWER} AND (latest.status <> excluded.status OR latest.since IS NULL)
        THEN excluded.since ELSE latest.since END,
    event_id = CASE WHEN {_NEWER} THEN excluded.event_id ELSE latest.event_id END,
    order_key = CASE WHEN {_NEWER} THEN excluded.order_key ELSE latest.order_key END
RETURNING server, kept, updated_at, event_id
"""
_INSERT_HEAD = (
    "INSERT INTO updates (received_at, server, status, error, data, event_id, node) VALUES "
)
_INSERT_ROW = "(?, ?, ?, ?, ?, ?, ?)"
_INSERT_TAIL = " ON CONFLICT (server, event_id) DO NOTHING RETURNING server"


_INSERT_ARRAYS = (
    "SELECT * FROM unnest(?::float8[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[],"
    " ?::text[])"
)
_UPSERT_ARRAYS = (
    "SELECT s, st, d, e, n, u, si, ev, ok, 1 FROM unnest(?::text[], ?::text[], ?::text[],"
    " ?::text[], ?::text[], ?::float8[], ?::float8[], ?::text[], ?::text[])"
    " AS t (s, st, d, e, n, u, si, ev, ok)"
)
#: The statuses of the servers in an array, before their updates (PostgreSQL).
STATUSES_ANY = "SELECT server, status FROM latest WHERE server = ANY(?)"


def insert_updates(rows: int, *, arrays: bool = False) -> str:
    """Insert *rows* updates (of different servers) into the history; returns the stored ones.

    An update whose server already sent its event id is left out. With
    *arrays* (PostgreSQL) the statement takes one array per column.
    """
    if arrays:
        return _INSERT_HEAD.replace(" VALUES ", " ") + _INSERT_ARRAYS + _INSERT_TAIL
    return _INSERT_HEAD + ", ".join([_INSERT_ROW] * rows) + _INSERT_TAIL


def upsert_latest(rows: int, *, arrays: bool = False) -> str:
    """
    Count *rows* updates (of different servers) in their histories, and make each
    its server's latest state unless the stored one is known to be newer.

    One statement for all: ingest's cost is its statements. ``since`` is when
    the server took its status. Returns ``server, kept, updated_at, event_id``.
    With *arrays* (PostgreSQL) the statement takes one array per column.
    """
    if arrays:
        return _UPSERT_HEAD.replace(" VALUES ", " ") + _UPSERT_ARRAYS + _UPSERT_TAIL
    return _UPSERT_HEAD + ", ".join([_UPSERT_ROW] * rows) + _UPSERT_TAIL


def statuses(rows: int) -> str:
    """The statuses of *rows* servers before their updates."""
    return f"SELECT server, status FROM latest WHERE server IN ({', '.join(['?'] * rows)})"  # noqa: S608


#: Drop the oldest updates of a server beyond what is kept.
PRUNE = (
    "DELETE FROM updates WHERE id IN (SELECT id FROM updates WHERE server = ? ORDER BY id LIMIT ?)"
)
SET_KEPT = "UPDATE latest SET kept = ? WHERE server = ?"
_LATEST_COLUMNS = (
    "SELECT l.server, l.status, l.data, l.updated_at, l.event_id, l.error, l.node, l.since,"
    " u.ts, u.memory_gb, u.cpu_vcpus, u.storage_gb, u.egress_gb, u.duration_hours,"
    " u.estimated_cost FROM latest l LEFT JOIN usage_latest u ON u.server = l.server"
)
LATEST_PAGE = _LATEST_COLUMNS + " WHERE l.server {after} ?{filters} ORDER BY l.server LIMIT ?"
LATEST_ONE = _LATEST_COLUMNS + " WHERE l.server = ?"
HISTORY = (
    "SELECT id, received_at, status, error, data, event_id, node FROM updates"
    " WHERE server = ? ORDER BY id DESC LIMIT ?"
)
COUNT = "SELECT COUNT(*) FROM updates"
#: Fill the columns a 0.1.0 database lacks.
MIGRATE_KEPT = (
    "UPDATE latest SET kept = (SELECT COUNT(*) FROM updates u WHERE u.server = latest.server)"
)
MIGRATE_KEYS = "SELECT server, event_id FROM latest WHERE event_id IS NOT NULL"
MIGRATE_SINCE = "UPDATE latest SET since = updated_at WHERE since IS NULL"
MIGRATE_ERROR = "UPDATE latest SET error = 'failed' WHERE status = 'failed' AND error IS NULL"
SET_KEY = "UPDATE latest SET order_key = ? WHERE server = ?"

INSERT_BILLING = (
    "INSERT INTO billing (received_at, server, node, ts, memory_gb, cpu_vcpus, storage_gb,"
    " egress_gb, duration_hours, estimated_cost, event_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (server, event_id) DO NOTHING"
    " RETURNING id"
)
#: The latest usage of a server: the billing event with the latest timestamp.
UPSERT_USAGE = """
INSERT INTO usage_latest (server, node, ts, memory_gb, cpu_vcpus, storage_gb, egress_gb,
    duration_hours, estimated_cost)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (server) DO UPDATE SET
    node = COALESCE(excluded.node, usage_latest.node), ts = excluded.ts,
    memory_gb = excluded.memory_gb, cpu_vcpus = excluded.cpu_vcpus,
    storage_gb = excluded.storage_gb, egress_gb = excluded.egress_gb,
    duration_hours = excluded.duration_hours, estimated_cost = excluded.estimated_cost
WHERE excluded.ts >= usage_latest.ts
"""
PRUNE_BILLING = (
    "DELETE FROM billing WHERE server = ? AND id <= (SELECT id FROM billing WHERE server = ?"
    " ORDER BY id DESC LIMIT 1 OFFSET ?)"
)
USAGE_PAGE = (
    "SELECT id, received_at, ts, memory_gb, cpu_vcpus, storage_gb, egress_gb, duration_hours,"
    " estimated_cost, node, event_id FROM billing WHERE server = ? AND id < ?"
    " ORDER BY id DESC LIMIT ?"
)
SERVERS_BY_NODE = "SELECT node, COUNT(*) FROM latest WHERE node IS NOT NULL GROUP BY node"
COST_BY_NODE = (
    "SELECT node, SUM(estimated_cost) FROM billing WHERE ts >= ? AND node IS NOT NULL GROUP BY node"
)
RESOURCES_BY_NODE = (
    "SELECT COALESCE(node, ''), SUM(memory_gb), SUM(cpu_vcpus), SUM(storage_gb), SUM(egress_gb),"
    " SUM(estimated_cost), COUNT(*) FROM usage_latest GROUP BY COALESCE(node, '')"
)
SERVERS_BY_STATUS = "SELECT status, COUNT(*) FROM latest GROUP BY status"
STUCK = "SELECT COUNT(*) FROM latest WHERE status = 'installing' AND since < ?"
NODES = "SELECT name, last_seen, state FROM nodes"
NODE_ROW = "SELECT last_seen, state FROM nodes WHERE name = ?"
INSERT_NODE = (
    "INSERT INTO nodes (name, last_seen, state) VALUES (?, ?, 'online')"
    " ON CONFLICT (name) DO NOTHING"
)
SET_NODE = "UPDATE nodes SET last_seen = ?, state = 'online' WHERE name = ?"
MARK_STALE = (
    "UPDATE nodes SET state = 'stale' WHERE state = 'online' AND last_seen < ?"
    " AND name IN ({names}) RETURNING name, last_seen"
)
INSERT_ALERT = (
    "INSERT INTO alerts (id, url, kind, node, server, status, data, at_ts, message, state,"
    " attempts, next_at, lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, 0)"
    " ON CONFLICT (id, url) DO NOTHING"
)
DUE_ALERTS = (
    "SELECT id, url, kind, node, server, status, data, at_ts, message, attempts FROM alerts"
    " WHERE state = 'pending' AND next_at <= ? AND lease_until <= ? AND url IN ({urls})"
    " ORDER BY at_ts LIMIT ?"
)
LEASE_ALERT = "UPDATE alerts SET lease_until = ? WHERE id = ? AND url = ?"
ALERT_SENT = "UPDATE alerts SET state = 'sent', lease_until = 0 WHERE id = ? AND url = ?"
ALERT_RETRY = (
    "UPDATE alerts SET attempts = attempts + 1, next_at = ?, lease_until = 0, state = ?"
    " WHERE id = ? AND url = ?"
)
ALERTS_BY_STATE = "SELECT state, COUNT(*) FROM alerts GROUP BY state"
RETAIN_UPDATES = "DELETE FROM updates WHERE received_at < ?"
RETAIN_BILLING = "DELETE FROM billing WHERE received_at < ?"
RETAIN_ALERTS = "DELETE FROM alerts WHERE state <> 'pending' AND at_ts < ?"


def tables(*, serial: str, real: str, collate: str = "") -> list[str]:
    """The schema's statements, one by one, with a dialect's types."""
    script = _TABLES.format(serial=serial, real=real, collate=collate)
    return [s.strip() for s in script.split(";") if s.strip()]


def order_key(event_id: Optional[str], now: float) -> Optional[str]:
    """
    The key that orders an update of its server, or None if it cannot be ordered.

    Only a UUID of version 7 has one (its canonical form, which sorts by time),
    and only if its time lies at most :data:`MAX_CLOCK_AHEAD` seconds after *now*.
    """
    if event_id is None or len(event_id) != 36 or not _UUID7.fullmatch(event_id):
        return None
    millis = int(event_id[:8] + event_id[9:13], 16)
    if millis / 1000.0 > now + MAX_CLOCK_AHEAD:
        return None
    return event_id.lower()


def latest_row(row: tuple[Any, ...]) -> dict[str, Any]:
    """A row of :data:`LATEST_PAGE` as the dict :meth:`ReceiverStore.latest` returns per server.

    ``since`` is when the server took its status; ``usage`` its latest billing
    numbers with their ``timestamp``, or None.
    """
    _server, status, data, at, event_id, error, node, since = row[:8]
    usage: Optional[dict[str, Any]] = None
    if row[8] is not None:
        usage = {"timestamp": int(row[8])}
        usage.update({name: float(v) for name, v in zip(BILLING_FIELDS, row[9:15])})
    return {
        "status": status,
        "data": data,
        "updated_at": at,
        "event_id": event_id,
        "error": error,
        "node": node,
        "since": at if since is None else since,
        "usage": usage,
    }


def usage_rows(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Rows of :data:`USAGE_PAGE` as dicts, in their order (newest first)."""
    out = []
    for row in rows:
        item: dict[str, Any] = {"id": int(row[0]), "received_at": row[1], "timestamp": int(row[2])}
        item.update({name: float(v) for name, v in zip(BILLING_FIELDS, row[3:9])})
        item["node"], item["event_id"] = row[9], row[10]
        out.append(item)
    return out


def history_rows(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Rows of :data:`HISTORY` (newest first) as dicts, oldest first."""
    return [
        {
            "id": row_id,
            "received_at": at,
            "status": status,
            "error": error,
            "data": data,
            "event_id": event_id,
            "node": node,
        }
        for row_id, at, status, error, data, event_id, node in reversed(rows)
    ]


def check_history(history: Optional[int]) -> Optional[int]:
    """*history* if it is None or a whole number >= 1; ValueError otherwise."""
    if history is not None and not (type(history) is int and history >= 1):
        raise ValueError(f"history: expected a whole number >= 1 or None, got {history!r}")
    return history
