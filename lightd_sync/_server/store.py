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
from collections.abc import Iterator, Sequence
from typing import Optional, Union

from .._exceptions import LightdSyncError
from .._forksafe import after_fork_in_child
from .._model import Event
from .queries import Run, SqlStore, create_schema
from .schema import DEFAULT_HISTORY, MAX_CLOCK_AHEAD, check_history, order_key, tables

__all__ = ["DEFAULT_HISTORY", "MAX_CLOCK_AHEAD", "ReceiverStore", "order_key"]

_IDLE_CONNECTIONS = 8


class _Job:
    """One caller's events, waiting to be committed with others (group commit)."""

    __slots__ = ("done", "error", "events", "lead", "node", "result", "when")

    def __init__(self, events: Sequence[Event], when: float, node: Optional[str]) -> None:
        self.events = events
        self.when = when
        self.node = node
        self.done = threading.Event()
        self.lead = False  # set when this caller is handed the leader's role instead
        self.result: list[bool] = []
        self.error: Optional[BaseException] = None


class ReceiverStore(SqlStore):
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
        if sqlite3.sqlite_version_info < (3, 35):
            raise sqlite3.NotSupportedError(
                f"the receiver needs SQLite 3.35 or later (RETURNING); this Python has "
                f"{sqlite3.sqlite_version}: use a PostgreSQL database, or a newer Python"
            )
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
        # Guards _waiting and _leading: callers of add_many queue up, one of
        # them (the leader) commits what is queued in one transaction.
        self._group_lock = threading.Lock()
        self._waiting: list[_Job] = []
        self._leading = False
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
        self._group_lock = threading.Lock()
        self._waiting = []
        self._leading = False
        self._idle = []

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")  # one process creates or migrates at a time
        try:
            for statement in tables(serial="INTEGER", real="REAL"):
                conn.execute(statement)
            have = {row[1] for row in conn.execute("PRAGMA table_info(latest)")}
            have_updates = {row[1] for row in conn.execute("PRAGMA table_info(updates)")}
            create_schema(conn.execute, have, have_updates)
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
            # Durable: a commit is on disk before the update is acknowledged.
            # Concurrent callers share a commit (see add_many), so the fsync
            # is paid once per group, not once per update.
            conn.execute("PRAGMA synchronous=FULL")
            # A fleet's indexes (random event ids) outgrow SQLite's 2 MiB page
            # cache at a few ten thousand updates, and ingest slows 3x.
            conn.execute("PRAGMA cache_size=-32768")  # KiB
            conn.execute("PRAGMA mmap_size=268435456")
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

    def add_many(
        self,
        events: Sequence[Event],
        *,
        received_at: Optional[float] = None,
        node: Optional[str] = None,
    ) -> list[bool]:
        """
        Store every event in one transaction (all or none); for each, whether it was stored.

        Callers that arrive while a commit is under way are committed
        together in the next transaction (group commit): each caller's
        events stay all or none, and one fsync serves them all.

        .. versionadded:: 0.2.0
        """
        job = _Job(events, time.time() if received_at is None else received_at, node)
        with self._group_lock:
            self._waiting.append(job)
            lead = not self._leading
            self._leading = True
        if not lead:
            job.done.wait()
            if not job.lead:
                if job.error is not None:
                    raise job.error
                return job.result
        self._lead()
        if job.error is not None:
            raise job.error
        return job.result

    def _lead(self) -> None:
        """Commit what is queued, once; then hand the role on to a waiting caller, if any."""
        with self._group_lock:
            jobs, self._waiting = self._waiting, []
        try:
            self._commit_group(jobs)
        finally:
            for done in jobs:
                done.done.set()
            with self._group_lock:
                if self._waiting:
                    heir = self._waiting[0]
                    heir.lead = True
                    heir.done.set()
                else:
                    self._leading = False

    def _commit_group(self, jobs: list[_Job]) -> None:
        try:
            with self._tx(write=True) as run:
                for job in jobs:
                    job.result = self._apply(run, job.events, job.when, job.node)
        except BaseException as exc:
            if len(jobs) == 1:
                jobs[0].error = exc
                return
            # One caller's events failed the group: commit each alone, so
            # that only the ones at fault fail.
            for job in jobs:
                try:
                    with self._tx(write=True) as run:
                        job.result = self._apply(run, job.events, job.when, job.node)
                except BaseException as alone:
                    job.error = alone

    @contextlib.contextmanager
    def _tx(self, *, write: bool) -> Iterator[Run]:
        with self._connection(write=write) as conn:
            if not write:
                yield conn.execute
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn.execute
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

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
