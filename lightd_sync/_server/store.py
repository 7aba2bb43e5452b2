"""Where the reference receiver keeps updates on one machine: :class:`ReceiverStore`, on SQLite.

The schema and the rules it shares with the PostgreSQL store are in
:mod:`lightd_sync._server.schema`.
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
from .schema import (
    COUNT,
    COUNT_KEPT,
    DEFAULT_HISTORY,
    HISTORY,
    INSERT_UPDATE,
    KEPT,
    LATEST_PAGE,
    MAX_CLOCK_AHEAD,
    MIGRATE_KEPT,
    MIGRATE_KEYS,
    NEW_COLUMNS,
    PRUNE,
    SET_KEPT,
    SET_KEY,
    UPSERT_LATEST,
    check_history,
    history_rows,
    latest_row,
    order_key,
    tables,
)

__all__ = ["DEFAULT_HISTORY", "MAX_CLOCK_AHEAD", "ReceiverStore", "order_key"]

_IDLE_CONNECTIONS = 8


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
