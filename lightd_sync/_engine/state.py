"""
The state store: the latest update of each server, and whether the remote
acknowledged it, kept in one file that survives a ``kill -9``.

The caller's thread only stores into two dicts; one library thread,
``lightd-sync-state``, writes them to the file (see :mod:`._state_file`)
in one transaction every ``flush_interval`` seconds.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import threading
import time
from typing import Any, Callable, Optional, Union

from .._logutil import Throttle, get_logger, safe_log
from .state_file import FileLock, StateFileError, connect, load, move_aside
from .state_rows import (
    Accepted,
    Discard,
    StoredUpdate,
    own_event_id,
    parse_rows,
)
from .state_writer import Writer

__all__ = ["CLOSE_GRACE", "FLUSH_INTERVAL", "StateStore", "StoredUpdate"]

log = get_logger("state")

#: Default seconds between two batch writes: the durability window's first term.
FLUSH_INTERVAL = 0.1

#: The least time close() gives the last write, whatever its timeout: the
#: last batch is one local transaction (milliseconds), and what close() is
#: for. Only a hung or failing disk makes close() wait this long.
CLOSE_GRACE = 0.5

#: The connections of stores that a fork copied into a child. They are never
#: closed or used there: closing would make SQLite checkpoint or unlock the
#: parent's file, so the child keeps them until it exits.
_ORPHANS: list[sqlite3.Connection] = []


class StateStore(Writer):
    """
    The latest update of each server and whether the remote acknowledged it, in one file.

    Args:
        path: The state file (``remote.state_path``; ``~`` is expanded). Its
            folder must exist. ``<path>.lock``, ``<path>-wal`` and
            ``<path>-shm`` are created next to it.
        max_servers: Rows kept: those of the most recently updated servers.
        flush_interval: Seconds between two batch writes.

    An update given to :meth:`accepted` is in the file once a write that
    started after it has committed: at most ``flush_interval`` plus one write
    later (see :doc:`/state`). :meth:`wait_flushed` waits for that.

    .. versionadded:: 0.2.0
    """

    def __init__(
        self, path: str, *, max_servers: int, flush_interval: float = FLUSH_INTERVAL
    ) -> None:
        if max_servers < 1:
            raise ValueError(f"max_servers must be at least 1, got {max_servers}")
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be > 0, got {flush_interval}")
        self.path = os.path.expanduser(path)
        self.max_servers = max_servers
        self.flush_interval = flush_interval
        # No lock for these two: callers store into them and the writer pops
        # from them, each a single dict operation, atomic in CPython (and in
        # free-threaded builds, where each dict has its own lock). A lock would
        # double the cost of accepted(), and the writer would never hold it anyway.
        # _pending holds the very object the caller gave (the outbox's item, no
        # copy and no tuple around it): the writer takes the updates alone,
        # orders them by their accepted_at and finds the server in their own.
        self._pending: dict[str, Any] = {}  # server -> its latest update
        self._acks: dict[str, str] = {}  # server -> the event id the remote acknowledged
        self._marks = itertools.count(1)  # sync points; atomic next() (a C iterator)
        self._init_locks()
        self._active = False
        self._opened = False
        self._thread: Optional[threading.Thread] = None
        # The writer thread's own, touched by no other thread while it runs:
        self._conn: Optional[sqlite3.Connection] = None
        self._file_lock: Optional[FileLock] = None
        self._rows = 0
        self._next_seq = 1  # the seq of the next row written: after every seq in the file
        self._write_errors = Throttle()
        self._failing = False  # the last batch failed
        #: Gives an update its event id (the outbox's; called by the writer thread).
        self.event_id_of: Callable[[Any], str] = own_event_id

    def _init_locks(self) -> None:
        # _cond's lock guards _durable, _flushes, the _write* timings, _deadline
        # and _closed: what the writer tells waiters (wait_flushed, close,
        # write_timings) and what close() tells it. Never held during I/O.
        self._cond = threading.Condition(threading.Lock())
        self._stop = threading.Event()  # close() asks the writer to write once more and stop
        self._durable = 0  # every sync point up to this one is in the file
        self._flushes = 0  # batches committed
        self._write_seconds = 0.0  # time spent in committed writes with rows, in total
        self._write_max = 0.0  # the slowest such write
        self._writes = 0  # how many such writes
        self._deadline = float("inf")  # when the writer gives up retrying its last batch
        self._closed = False

    # -- the caller's side ------------------------------------------------------

    @property
    def active(self) -> bool:
        """True while updates go to the file; False: memory only (a bad file, a fork, closed)."""
        return self._active

    @property
    def flush_count(self) -> int:
        """How many batches the writer has committed to the file."""
        return self._flushes

    def write_timings(self) -> tuple[int, float, float]:
        """Return (writes with rows or acks, their total seconds, the slowest one's seconds)."""
        with self._cond:
            return self._writes, self._write_seconds, self._write_max

    def accepted(
        self,
        server: str,
        update: Any,
        data: Optional[str] = None,
        event_id: Union[str, Callable[[], str], None] = None,
        error: Optional[str] = None,
    ) -> None:
        """
        Record that *update* is now *server*'s latest, not acknowledged.

        *update* has ``server`` (*server*), ``status``, ``data``, ``error``,
        ``event_id`` and ``accepted_at`` (a :func:`time.monotonic` time: it
        orders the rows) attributes (the engine's item: an event id it lacks is asked of
        :attr:`event_id_of` by the writer thread, so the caller's thread never
        makes one). Or *update* is a status, with *data*, *event_id* (a string
        or a callable that makes it) and *error*. Costs one dict store: no
        I/O, no lock; safe from any thread.
        """
        if event_id is not None:
            update = Accepted(server, update, data, event_id, error)
        self._pending[server] = update

    def acknowledged(self, server: str, event_id: str) -> None:
        """The remote acknowledged *event_id*; if it is still *server*'s latest, mark it."""
        self._acks[server] = event_id

    def sync_point(self) -> int:
        """Return a mark: :meth:`flushed` (mark) is true once all accepted before it is written."""
        return next(self._marks)

    def flushed(self, mark: int) -> bool:
        """Whether every update and acknowledgement given before *mark* is in the file."""
        return self._durable >= mark

    def wait_flushed(self, timeout: float) -> bool:
        """
        Wait until everything given to this store before the call is in the file.

        Returns False on timeout or when the store is not writing (inactive, closed).
        """
        mark = self.sync_point()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._durable < mark:
                left = deadline - time.monotonic()
                if left <= 0 or not self._active:
                    return False
                self._cond.wait(left)
        return True

    # -- open and close ---------------------------------------------------------

    def open(self) -> list[StoredUpdate]:
        """
        Open (or create) the file, take its lock, start the writer thread.

        Returns the unacknowledged rows, the least recently updated first.
        Any problem with the file is logged once (naming ``remote.state_path``)
        and the store runs on memory only (:attr:`active` is False).

        Raises:
            ConfigError: another process, or another store in this process,
                holds the file; the message names the holder's pid.
        """
        if self._opened:
            raise RuntimeError("StateStore.open() was already called")
        self._opened = True
        problem = self._precheck()
        if problem is not None:
            return self._memory_only(problem)
        try:
            self._file_lock = FileLock(self.path)  # ConfigError propagates
        except OSError as exc:
            return self._memory_only(
                f"cannot create its lock file {self.path}.lock: {exc.strerror}"
            )
        try:
            rows = self._connect()
        except StateFileError as exc:
            self._file_lock.release()
            self._file_lock = None
            return self._memory_only(exc.reason)
        self._active = True
        self._thread = threading.Thread(target=self._run, name="lightd-sync-state", daemon=True)
        self._thread.start()
        return rows

    def _precheck(self) -> Optional[str]:
        folder = os.path.dirname(os.path.abspath(self.path))
        if os.path.isdir(self.path):
            return "it is a folder, not a file"
        if not os.path.isdir(folder):
            return f"its folder {folder} does not exist (lightd-sync does not create it)"
        return None

    def _connect(self) -> list[StoredUpdate]:
        try:
            self._conn = connect(self.path)
        except StateFileError as exc:
            if not exc.ours:
                raise
            target = move_aside(self.path)
            safe_log(
                log,
                logging.ERROR,
                "remote.state_path: %s: %s; moved it to %s and started a new, empty state"
                " file: the servers it listed as not acknowledged will not be re-sent",
                self.path,
                exc.reason,
                target,
            )
            self._conn = connect(self.path)  # a StateFileError now is a new problem: memory only
        try:
            raw, top = load(self._conn, self.max_servers)
            self._rows = len(raw)
        except sqlite3.Error as exc:
            self._conn.close()
            self._conn = None
            raise StateFileError(f"SQLite cannot read it: {exc}") from None
        self._next_seq = top + 1
        rows, skipped = parse_rows(raw)
        if skipped:
            safe_log(
                log, logging.ERROR,
                "remote.state_path: %s: skipped %d rows that are not valid updates",
                self.path, skipped,
            )  # fmt: skip
        return rows

    def _memory_only(self, problem: str) -> list[StoredUpdate]:
        safe_log(
            log,
            logging.ERROR,
            "remote.state_path: %s: %s; running on memory only: the latest status of"
            " servers the remote has not acknowledged will not survive a restart",
            self.path,
            problem,
        )
        self._pending = Discard()
        self._acks = Discard()
        return []

    def close(self, timeout: float) -> bool:
        """
        Write everything accepted before this call, stop the writer, release the lock.

        Waits for that last write up to *timeout* seconds, but at least
        :data:`CLOSE_GRACE` (0.5 s), whatever the disk does. Returns False (and
        logs) when the last write did not commit by then: the updates accepted
        since the previous write may then be missing from the file. The writer
        thread then ends (and unlocks the file) as soon as the disk returns.
        """
        wait = max(timeout, CLOSE_GRACE)
        with self._cond:
            if self._closed:
                return True
            self._closed = True
            self._deadline = time.monotonic() + wait
        self._stop.set()
        thread = self._thread
        if thread is None:
            self._active = False
            return True
        thread.join(max(self._deadline - time.monotonic(), 0.0))
        if thread.is_alive():
            safe_log(
                log,
                logging.ERROR,
                "remote.state_path: %s: the last write did not finish within %.1f s;"
                " updates accepted in the last %.1f s may be missing from it",
                self.path,
                wait,
                self.flush_interval,
            )
            return False
        return True

    def forget_in_child(self) -> None:
        """In a forked child (the engine calls it): no writer thread; the file is the parent's."""
        self._init_locks()
        self._closed = True
        self._active = False
        self._thread = None
        self._pending = Discard()
        self._acks = Discard()
        if self._conn is not None:
            _ORPHANS.append(self._conn)
            self._conn = None
        if self._file_lock is not None:
            self._file_lock.forget_in_child()
            self._file_lock = None
