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

import uuid
from typing import Any, Optional

__all__ = [
    "DEFAULT_HISTORY",
    "MAX_CLOCK_AHEAD",
    "check_history",
    "history_rows",
    "latest_row",
    "order_key",
    "tables",
]

#: Updates kept per server unless told otherwise.
DEFAULT_HISTORY = 1000
#: Seconds an event id's time may lie past the receiver's clock and still order updates.
MAX_CLOCK_AHEAD = 300.0

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
CREATE TABLE IF NOT EXISTS latest (
    server TEXT{collate} PRIMARY KEY,
    status TEXT NOT NULL,
    data TEXT,
    updated_at {real} NOT NULL,
    event_id TEXT
)
"""
#: Columns of ``latest`` added after 0.1.0, with their definitions.
NEW_COLUMNS = {"order_key": "TEXT", "kept": "BIGINT NOT NULL DEFAULT 0"}

# Every statement an add() runs, with ? placeholders (PostgreSQL's store swaps in %s).
#: Insert into the history; nothing if this server already sent this event id.
INSERT_UPDATE = (
    "INSERT INTO updates (received_at, server, status, error, data, event_id)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (server, event_id) DO NOTHING"
)
#: Replace a server's latest state unless the stored one is known to be newer.
UPSERT_LATEST = """
INSERT INTO latest (server, status, data, updated_at, event_id, order_key, kept)
VALUES (?, ?, ?, ?, ?, ?, 0)
ON CONFLICT (server) DO UPDATE SET
    status = excluded.status, data = excluded.data, updated_at = excluded.updated_at,
    event_id = excluded.event_id, order_key = excluded.order_key
WHERE excluded.order_key IS NULL OR latest.order_key IS NULL
    OR excluded.order_key >= latest.order_key
"""
#: Count the update in its server's history.
COUNT_KEPT = "UPDATE latest SET kept = kept + 1 WHERE server = ?"
KEPT = "SELECT kept FROM latest WHERE server = ?"
#: Drop the oldest updates of a server beyond what is kept.
PRUNE = (
    "DELETE FROM updates WHERE id IN (SELECT id FROM updates WHERE server = ? ORDER BY id LIMIT ?)"
)
SET_KEPT = "UPDATE latest SET kept = ? WHERE server = ?"
LATEST_PAGE = (
    "SELECT server, status, data, updated_at, event_id FROM latest"
    " WHERE server > ? ORDER BY server LIMIT ?"
)
HISTORY = (
    "SELECT id, received_at, status, error, data, event_id FROM updates"
    " WHERE server = ? ORDER BY id DESC LIMIT ?"
)
COUNT = "SELECT COUNT(*) FROM updates"
#: Fill the columns a 0.1.0 database lacks.
MIGRATE_KEPT = (
    "UPDATE latest SET kept = (SELECT COUNT(*) FROM updates u WHERE u.server = latest.server)"
)
MIGRATE_KEYS = "SELECT server, event_id FROM latest WHERE event_id IS NOT NULL"
SET_KEY = "UPDATE latest SET order_key = ? WHERE server = ?"


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
    if event_id is None or len(event_id) != 36:
        return None
    try:
        value = uuid.UUID(event_id)
    except ValueError:
        return None
    if value.version != 7 or value.variant != uuid.RFC_4122:
        return None
    millis = value.int >> 80
    if millis / 1000.0 > now + MAX_CLOCK_AHEAD:
        return None
    return str(value)


def latest_row(row: tuple[Any, ...]) -> dict[str, Any]:
    """A ``latest`` row as the dict :meth:`ReceiverStore.latest` returns per server."""
    _server, status, data, at, event_id = row
    return {"status": status, "data": data, "updated_at": at, "event_id": event_id}


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
        }
        for row_id, at, status, error, data, event_id in reversed(rows)
    ]


def check_history(history: Optional[int]) -> Optional[int]:
    """*history* if it is None or a whole number >= 1; ValueError otherwise."""
    if history is not None and not (type(history) is int and history >= 1):
        raise ValueError(f"history: expected a whole number >= 1 or None, got {history!r}")
    return history
