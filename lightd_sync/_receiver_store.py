"""Where the reference receiver keeps updates: :class:`ReceiverStore`, on SQLite."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Optional, Union

from ._exceptions import LightdSyncError
from ._model import Update

__all__ = ["ReceiverStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS updates (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
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
    server TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    data TEXT,
    updated_at REAL NOT NULL,
    event_id TEXT
);
"""
_IDLE_CONNECTIONS = 8


# Replace a server's latest state, unless both event ids are time-ordered (UUIDv7,
# version digit at position 15) and the stored one is newer.
_UPSERT_LATEST = """
INSERT INTO latest (server, status, data, updated_at, event_id) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (server) DO UPDATE SET
    status = excluded.status, data = excluded.data,
    updated_at = excluded.updated_at, event_id = excluded.event_id
WHERE NOT (
    substr(coalesce(excluded.event_id, ''), 15, 1) = '7'
    AND substr(coalesce(latest.event_id, ''), 15, 1) = '7'
    AND excluded.event_id < latest.event_id
)
"""


class ReceiverStore:
    """
    The updates a receiver took: the history of each server and its latest state.

    Thread-safe. Connections come from a small pool (one per thread at a
    time); the server runs a thread per connection, so a connection per
    *thread* would mean opening and leaking one per request. On a file the
    database is in WAL mode, so readers never wait for the writer.

    Args:
        db_path: The SQLite file, created if missing; ``None`` keeps the data
            in memory, shared by all threads and gone on :meth:`close`.
        busy_timeout: Seconds to wait for another process's write lock.
    """

    def __init__(
        self,
        db_path: Union[str, os.PathLike[str], None] = None,
        *,
        busy_timeout: float = 5.0,
    ) -> None:
        self.memory = db_path is None
        if db_path is None:
            self._target = f"file:lightd-recv-{uuid.uuid4().hex}?mode=memory&cache=shared"
        else:
            self._target = os.fspath(db_path)
        self._busy_timeout = busy_timeout
        # Guards _idle and _closed, the pool's bookkeeping.
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        # Serializes this process's writers (SQLite has one writer at a time
        # anyway, and they queue better on a lock than in SQLite's busy loop).
        # In memory it serializes readers too: shared-cache tables lock with
        # SQLITE_LOCKED, which the busy timeout does not wait for.
        self._db_lock = threading.Lock()
        # Holds the in-memory database alive (it is freed with its last
        # connection); on a file, it just creates the schema and joins the pool.
        first = self._connect()
        try:
            if not self.memory:
                first.execute("PRAGMA journal_mode=WAL")
            first.executescript(_SCHEMA)
        except BaseException:
            first.close()
            raise
        self._keeper: Optional[sqlite3.Connection] = first if self.memory else None
        if not self.memory:
            self._idle.append(first)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._target,
            timeout=self._busy_timeout,
            isolation_level=None,  # we BEGIN and COMMIT ourselves
            check_same_thread=False,  # used by one thread at a time, closed by any
            uri=self.memory,
        )
        if not self.memory:
            conn.execute("PRAGMA synchronous=NORMAL")  # durable enough with WAL
        return conn

    @contextlib.contextmanager
    def _connection(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        lock = self._db_lock if (write or self.memory) else contextlib.nullcontext()
        with lock:
            with self._pool_lock:
                if self._closed:
                    raise LightdSyncError("the receiver's store is closed")
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self._connect()
            try:
                yield conn
            finally:
                with self._pool_lock:
                    keep = not self._closed and len(self._idle) < _IDLE_CONNECTIONS
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    conn.close()

    def add(self, update: Update, *, received_at: Optional[float] = None) -> bool:
        """
        Store *update* in the history and as its server's latest state, in one transaction.

        An error update is stored with status ``failed``, ``error`` ``failed``
        and its data. An update whose :attr:`~lightd_sync.Update.event_id` this server
        already sent (a retry whose answer was lost, a resync) is not stored twice.
        lightd-sync's event ids sort in the order one engine made them (UUID
        version 7): an update that arrives after a newer one of the same server
        (a request the remote finished after the client had given up on it)
        goes into the history but does not replace the latest state.

        Args:
            update: The update received, with the ``X-Lightd-Event-Id`` it came with, if any.
            received_at: When it arrived (seconds since the epoch); default now.

        Returns:
            True if stored, False if it was a duplicate.

        Raises:
            LightdSyncError: The store is closed.
            sqlite3.Error: The database failed (disk full, locked too long, ...).
        """
        when = time.time() if received_at is None else received_at
        error = update.status.value if update.is_error else None
        row = (when, update.server, update.status.value, error, update.data, update.event_id)
        with self._connection(write=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO updates"
                    " (received_at, server, status, error, data, event_id)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    row,
                )
                stored = cursor.rowcount == 1
                if stored:
                    conn.execute(_UPSERT_LATEST, (*row[1:3], update.data, when, update.event_id))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        return stored

    def latest(self) -> dict[str, dict[str, Any]]:
        """
        Return the latest state of every server: ``{server: {status, data, updated_at, event_id}}``.

        Raises:
            LightdSyncError: The store is closed.
        """
        with self._connection(write=False) as conn:
            rows = conn.execute(
                "SELECT server, status, data, updated_at, event_id FROM latest ORDER BY server"
            ).fetchall()
        return {
            server: {"status": status, "data": data, "updated_at": at, "event_id": event_id}
            for server, status, data, at, event_id in rows
        }

    def history(self, server: str, limit: Optional[int] = None) -> list[dict[str, Any]]:
        """
        Return the updates of *server*, oldest first (the newest *limit* ones, if given).

        Each is ``{id, received_at, status, error, data, event_id}``; an
        unknown server has an empty history.

        Raises:
            LightdSyncError: The store is closed.
        """
        with self._connection(write=False) as conn:
            rows = conn.execute(
                "SELECT id, received_at, status, error, data, event_id FROM updates"
                " WHERE server = ? ORDER BY id DESC LIMIT ?",
                (server, -1 if limit is None else limit),
            ).fetchall()
        rows.reverse()
        return [
            {
                "id": row_id,
                "received_at": at,
                "status": status,
                "error": error,
                "data": data,
                "event_id": event_id,
            }
            for row_id, at, status, error, data, event_id in rows
        ]

    def count(self) -> int:
        """
        Return how many updates are stored, over all servers.

        Raises:
            LightdSyncError: The store is closed.
        """
        with self._connection(write=False) as conn:
            (total,) = conn.execute("SELECT COUNT(*) FROM updates").fetchone()
        return int(total)

    def close(self) -> None:
        """Close the database; an in-memory one is gone. Calling it again does nothing."""
        with self._db_lock, self._pool_lock:  # the order _connection takes them in
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
            keeper, self._keeper = self._keeper, None
        for conn in idle:
            conn.close()
        if keeper is not None:
            keeper.close()
        # Connections lent out (to readers of a file) are closed as they come back.

    def __repr__(self) -> str:
        where = "memory" if self.memory else repr(self._target)
        return f"<ReceiverStore {where}{' closed' if self._closed else ''}>"
