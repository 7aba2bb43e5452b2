"""
Where the reference receiver keeps updates: :class:`ReceiverStore` (SQLite), and what stores share.

Both stores (this one and :class:`~lightd_sync._server.postgres.PostgresStore`)
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

import contextlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Optional, Union

from .._exceptions import LightdSyncError
from .._forksafe import after_fork_in_child
from .._model import Update

__all__ = ["DEFAULT_HISTORY", "MAX_CLOCK_AHEAD", "ReceiverStore", "order_key"]

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

_IDLE_CONNECTIONS = 8


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


class ReceiverStore:
    """
    The updates a receiver took, in SQLite: the history of each server and its latest state.

    Thread-safe. Connections come from a small pool (one per thread at a
    time). On a file the database is in WAL mode, so readers never wait for
    the writer, and several processes may share it on one machine. A file
    made by lightd-sync 0.1.0 is migrated when opened.

    Args:
        db_path: The SQLite file, created if missing; ``None`` keeps the data
            in memory, shared by all threads and gone on :meth:`close`.
        busy_timeout: Seconds to wait for another process's write lock.
        history: Updates kept per server, the newest ones (``None``: all).

    Raises:
        sqlite3.Error: The database cannot be opened or migrated.
        ValueError: *history* is not None or a whole number >= 1.
    """

    #: The errors a failing database raises (the receiver answers them 503).
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(
        self,
        db_path: Union[str, os.PathLike[str], None] = None,
        *,
        busy_timeout: float = 5.0,
        history: Optional[int] = DEFAULT_HISTORY,
    ) -> None:
        self.history_limit = check_history(history)
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
            self._create_schema(first)
        except BaseException:
            first.close()
            raise
        self._keeper: Optional[sqlite3.Connection] = first if self.memory else None
        if not self.memory:
            self._idle.append(first)
        after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        # New locks (a parent's thread may have held them), and none of the
        # parent's connections: SQLite's must not cross a fork. Forgotten, not
        # closed, since closing could release the parent's locks on the file.
        self._pool_lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._idle = []

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")  # one process creates or migrates at a time
        try:
            for statement in tables(serial="INTEGER", real="REAL"):
                conn.execute(statement)
            have = {row[1] for row in conn.execute("PRAGMA table_info(latest)")}
            missing = [name for name in NEW_COLUMNS if name not in have]
            for name in missing:
                conn.execute(f"ALTER TABLE latest ADD COLUMN {name} {NEW_COLUMNS[name]}")
            if "kept" in missing:
                conn.execute(MIGRATE_KEPT)
            if "order_key" in missing:
                now = time.time()
                for server, eid in conn.execute(MIGRATE_KEYS).fetchall():
                    conn.execute(SET_KEY, (order_key(eid, now), server))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

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
        already sent (a retry whose answer was lost, a resync) is not stored twice,
        as long as that earlier one is still in the history.
        lightd-sync's event ids sort in the order one engine made them (UUID
        version 7): an update that arrives after a newer one of the same server
        (a request the remote finished after the client had given up on it)
        goes into the history but does not replace the latest state. An id
        that is not time-ordered, or whose time is more than five minutes
        ahead of this machine's clock, orders nothing: its update replaces the
        latest state, and a later update replaces it.

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
        key = order_key(update.event_id, time.time())
        error = update.status.value if update.is_error else None
        server, status = update.server, update.status.value
        row = (when, server, status, error, update.data, update.event_id)
        with self._connection(write=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                stored = conn.execute(INSERT_UPDATE, row).rowcount == 1
                if stored:
                    latest = (server, status, update.data, when, update.event_id, key)
                    conn.execute(UPSERT_LATEST, latest)
                    conn.execute(COUNT_KEPT, (server,))
                    self._prune(conn, server)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        return stored

    def _prune(self, conn: sqlite3.Connection, server: str) -> None:
        if self.history_limit is None:
            return
        (kept,) = conn.execute(KEPT, (server,)).fetchone()
        if kept > self.history_limit:
            conn.execute(PRUNE, (server, kept - self.history_limit))
            conn.execute(SET_KEPT, (self.history_limit, server))

    def latest(self) -> dict[str, dict[str, Any]]:
        """
        Return the latest state of every server: ``{server: {status, data, updated_at, event_id}}``.

        Holds the whole fleet in memory: the receiver itself reads it a page
        at a time with :meth:`latest_page`.

        Raises:
            LightdSyncError: The store is closed.
        """
        result: dict[str, dict[str, Any]] = {}
        after = ""
        while True:
            page = self.latest_page(after, 1000)
            result.update(page)
            if len(page) < 1000:
                return result
            after = next(reversed(page))

    def latest_page(self, after: str, limit: int) -> dict[str, dict[str, Any]]:
        """
        Return the latest state of at most *limit* servers whose ids sort after *after*.

        Raises:
            LightdSyncError: The store is closed.
        """
        with self._connection(write=False) as conn:
            rows = conn.execute(LATEST_PAGE, (after, limit)).fetchall()
        return {row[0]: latest_row(row) for row in rows}

    def history(self, server: str, limit: Optional[int] = None) -> list[dict[str, Any]]:
        """
        Return the updates of *server*, oldest first (the newest *limit* ones, if given).

        Each is ``{id, received_at, status, error, data, event_id}``; an
        unknown server has an empty history.

        Raises:
            LightdSyncError: The store is closed.
        """
        with self._connection(write=False) as conn:
            rows = conn.execute(HISTORY, (server, -1 if limit is None else limit)).fetchall()
        return history_rows(rows)

    def count(self) -> int:
        """
        Return how many updates are stored, over all servers.

        Raises:
            LightdSyncError: The store is closed.
        """
        with self._connection(write=False) as conn:
            (total,) = conn.execute(COUNT).fetchone()
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

    def __enter__(self) -> ReceiverStore:
        """Use the store in a ``with`` block: it is closed on the way out.

        .. versionadded:: 0.2.0
        """
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "memory" if self.memory else repr(self._target)
        return f"<ReceiverStore {where}{' closed' if self._closed else ''}>"
