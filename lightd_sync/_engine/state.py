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

import attrs

from .._ids import new_event_id
from .._logutil import Throttle, get_logger, safe_log
from .._model import Status, error_value_problem, server_id_problem
from .state_file import FileLock, StateFileError, connect, load, move_aside, write_batch

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


@attrs.frozen
class StoredUpdate:
    """
    A server's latest update as the state file kept it, not acknowledged by the remote.

    The engine re-sends it as ``Update(server, status, data, error=error, event_id=event_id)``.

    .. versionadded:: 0.2.0
    """

    server: str
    status: Status
    data: Optional[str]
    event_id: str
    error: Optional[str] = None
    """The update's ``error`` value (``None``: ``"failed"`` when ``data`` is set).

    .. versionadded:: 0.2.0
    """


def _id_of(update: Any, event_id_of: Callable[[Any], str]) -> str:
    if type(update) is _Accepted:
        return _own_event_id(update)
    return event_id_of(update)


class _Discard(dict):  # type: ignore[type-arg]
    """What an inactive store stores into: nothing, at the cost of one call."""

    def __setitem__(self, key: object, value: object) -> None:
        pass


def _drain(d: dict[Any, Any]) -> list[tuple[Any, Any]]:
    """Take every item out of *d* while callers keep storing into it (each pop is atomic)."""
    out = []
    for _ in range(len(d)):
        try:
            out.append(d.popitem())
        except KeyError:  # pragma: no cover - only the writer removes
            break
    return out


def _by_seq(item: tuple[str, tuple[Any, int]]) -> int:
    return item[1][1]


def _own_event_id(update: Any) -> str:
    """A store used alone: give an update without one a new event id."""
    make = getattr(update, "make", None)
    update.event_id = make() if make is not None else new_event_id()
    return str(update.event_id)


class _Accepted:
    """An update given to :meth:`StateStore.accepted` field by field."""

    __slots__ = ("data", "error", "event_id", "make", "status")

    def __init__(
        self,
        status: Any,
        data: Optional[str],
        event_id: Union[str, Callable[[], str]],
        error: Optional[str],
    ) -> None:
        self.status, self.data, self.error = status, data, error
        self.event_id: Optional[str] = event_id if isinstance(event_id, str) else None
        self.make: Optional[Callable[[], str]] = None if isinstance(event_id, str) else event_id


class StateStore:
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
        self._pending: dict[str, tuple[Any, int]] = {}  # server -> (its latest update, seq)
        self._acks: dict[str, str] = {}  # server -> the event id the remote acknowledged
        self._seq = itertools.count(1)  # orders updates; atomic next() (a C iterator)
        self._init_locks()
        self._active = False
        self._opened = False
        self._thread: Optional[threading.Thread] = None
        # The writer thread's own, touched by no other thread while it runs:
        self._conn: Optional[sqlite3.Connection] = None
        self._file_lock: Optional[FileLock] = None
        self._rows = 0
        self._write_errors = Throttle()
        self._failing = False  # the last batch failed
        #: Gives an update its event id (the outbox's; called by the writer thread).
        self.event_id_of: Callable[[Any], str] = _own_event_id

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

        *update* has ``status``, ``data``, ``error`` and ``event_id``
        attributes (the engine's item: an event id it lacks is asked of
        :attr:`event_id_of` by the writer thread, so the caller's thread never
        makes one). Or *update* is a status, with *data*, *event_id* (a string
        or a callable that makes it) and *error*. Costs one dict store: no
        I/O, no lock; safe from any thread.
        """
        if event_id is not None:
            update = _Accepted(update, data, event_id, error)
        self._pending[server] = (update, next(self._seq))

    def acknowledged(self, server: str, event_id: str) -> None:
        """The remote acknowledged *event_id*; if it is still *server*'s latest, mark it."""
        self._acks[server] = event_id

    def sync_point(self) -> int:
        """Return a mark: :meth:`flushed` (mark) is true once all accepted before it is written."""
        return next(self._seq)

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
        self._seq = itertools.count(top + 1)
        rows, skipped = [], 0
        for server, status, data, event_id, error in raw:
            try:
                if server_id_problem(server) is not None or not isinstance(event_id, str):
                    raise ValueError(server)
                if error is not None and error_value_problem(error) is not None:
                    raise ValueError(server)
                rows.append(StoredUpdate(server, Status(status), data, event_id, error))
            except ValueError:
                skipped += 1
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
        self._pending = _Discard()
        self._acks = _Discard()
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

    # -- the writer thread --------------------------------------------------------

    def _run(self) -> None:
        interval = self.flush_interval
        next_at = time.monotonic() + interval
        try:
            while True:
                stopping = self._stop.wait(max(next_at - time.monotonic(), 0.0))
                next_at = max(next_at + interval, time.monotonic())
                if stopping:
                    self._final_write()
                    return
                if not self._write_once():
                    return
        finally:
            self._shutdown()

    def _final_write(self) -> None:
        """The batch close() asked for: retried until it commits or close's deadline."""
        while True:
            mark = self._durable
            if self._write_once() is False or self._durable > mark:
                return
            with self._cond:
                left = self._deadline - time.monotonic()
            if left <= 0:
                safe_log(
                    log,
                    logging.ERROR,
                    "remote.state_path: %s: could not write the last batch before close's"
                    " deadline; the updates accepted since the previous write are not in it",
                    self.path,
                )
                return
            time.sleep(min(self.flush_interval, left))

    def _write_once(self) -> bool:
        """Write one batch. Return False once the file is unusable (the writer then stops)."""
        mark = next(self._seq)
        acks = _drain(self._acks)  # before the rows: each ack's row is then in this batch or before
        taken = _drain(self._pending)
        taken.sort(key=_by_seq)
        rows = taken[-self.max_servers :] if len(taken) > self.max_servers else taken
        event_id_of = self.event_id_of
        rows = [
            (server, (u.status, u.data, u.event_id or _id_of(u, event_id_of), seq, u.error))
            for server, (u, seq) in rows
        ]
        ack_rows = acks
        if rows or ack_rows:
            assert self._conn is not None
            started = time.perf_counter()
            try:
                self._rows = write_batch(self._conn, rows, ack_rows, self.max_servers, self._rows)
            except sqlite3.Error as exc:
                if type(exc) is sqlite3.DatabaseError:  # corrupt, not a database: give up
                    return self._unusable(exc)
                # Disk full, I/O error, locked by another program: keep it and retry.
                self._failing = True
                for server, row in taken:
                    self._pending.setdefault(server, row)
                for server, event_id in acks:
                    self._acks.setdefault(server, event_id)
                count = self._write_errors.hit()
                if count is not None:
                    safe_log(
                        log,
                        logging.ERROR,
                        "remote.state_path: %s: cannot write (%s; %d times); the state stays"
                        " in memory and the next batch retries",
                        self.path,
                        exc,
                        count,
                    )
                return True
            if self._failing:
                self._failing = False
                self._write_errors.take()
                self._write_errors.restart()
                safe_log(log, logging.WARNING, "remote.state_path: %s: writing again", self.path)
            took = time.perf_counter() - started
            with self._cond:
                self._writes += 1
                self._write_seconds += took
                self._write_max = max(self._write_max, took)
        with self._cond:
            self._durable = mark
            self._flushes += 1
            self._cond.notify_all()
        return True

    def _unusable(self, exc: sqlite3.Error) -> bool:
        safe_log(
            log,
            logging.ERROR,
            "remote.state_path: %s: it became unusable (%s); running on memory only",
            self.path,
            exc,
        )
        self._active = False
        self._pending = _Discard()
        self._acks = _Discard()
        return False

    def _shutdown(self) -> None:
        self._active = False
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()  # the last connection: SQLite checkpoints and removes the -wal
            except sqlite3.Error as exc:
                safe_log(log, logging.WARNING, "remote.state_path: %s: %s", self.path, exc)
        if self._file_lock is not None:
            self._file_lock.release()
            self._file_lock = None
        with self._cond:
            self._cond.notify_all()

    def forget_in_child(self) -> None:
        """In a forked child (the engine calls it): the writer thread is gone; the file is the parent's."""
        self._init_locks()
        self._closed = True
        self._active = False
        self._thread = None
        self._pending = _Discard()
        self._acks = _Discard()
        if self._conn is not None:
            _ORPHANS.append(self._conn)
            self._conn = None
        if self._file_lock is not None:
            self._file_lock.forget_in_child()
            self._file_lock = None
