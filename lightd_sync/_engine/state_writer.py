"""The state store's writer thread, ``lightd-sync-state``: one batch per ``flush_interval``."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

from .._logutil import Throttle, get_logger, safe_log
from .state_file import CHUNK, FileLock, Row, write_batch
from .state_rows import Discard, by_time, drain, drain_values, id_of

__all__ = ["Writer"]

log = get_logger("state")


class Writer:
    """
    What the writer thread does (the base of :class:`~.state.StateStore`, which owns the state).

    While it runs, ``_conn``, ``_file_lock``, ``_rows``, ``_next_seq``,
    ``_write_errors`` and ``_failing`` are touched by no other thread.
    """

    path: str
    max_servers: int
    flush_interval: float
    event_id_of: Callable[[Any], str]
    _pending: dict[str, Any]
    _acks: dict[str, str]
    _marks: Iterator[int]
    _cond: threading.Condition
    _stop: threading.Event
    _durable: int
    _flushes: int
    _write_seconds: float
    _write_max: float
    _writes: int
    _deadline: float
    _active: bool
    _conn: Optional[sqlite3.Connection]
    _file_lock: Optional[FileLock]
    _rows: int
    _next_seq: int
    _write_errors: Throttle
    _failing: bool

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
        mark = next(self._marks)
        acks = drain(self._acks)  # before the rows: each ack's row is then in this batch or before
        taken: list[Any] = drain_values(self._pending)  # updates; None once let go (_chunks)
        taken.sort(key=by_time)
        if len(taken) > self.max_servers:
            del taken[: len(taken) - self.max_servers]  # the file would trim them anyway
        if taken or acks:
            assert self._conn is not None
            started = time.perf_counter()
            try:
                self._rows = write_batch(
                    self._conn, self._chunks(taken), acks, self.max_servers, self._rows
                )
            except sqlite3.Error as exc:
                if type(exc) is sqlite3.DatabaseError:  # corrupt, not a database: give up
                    return self._unusable(exc)
                # Disk full, I/O error, locked by another program: keep it and retry.
                self._failing = True
                for update in taken:
                    if update is not None:
                        self._pending.setdefault(update.server, update)
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
            self._next_seq += len(taken)
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

    def _chunks(self, taken: list[Any]) -> Iterator[list[Row]]:
        """
        The rows of *taken* (oldest first), :data:`CHUNK` at a time, made as they are written.

        One chunk of rows and its JSON exist at a time, not the whole batch's.
        Rows get consecutive seqs from ``_next_seq``, in the order of *taken*.
        An update whose server has a newer one waiting in ``_pending`` leaves
        *taken* (None in its place) once its row is made: a retry of this batch
        would not write it (see :meth:`_write_once`), so it need not outlive its row.
        """
        event_id_of, pending = self.event_id_of, self._pending
        seq = self._next_seq
        for start in range(0, len(taken), CHUNK):
            chunk: list[Row] = []
            for i in range(start, min(start + CHUNK, len(taken))):
                u = taken[i]
                event_id = u.event_id or id_of(u, event_id_of)
                if type(event_id) is str:  # no event id: not a row the engine can re-send
                    status = str(getattr(u.status, "value", u.status))
                    chunk.append((u.server, status, u.data, event_id, seq, u.error))
                seq += 1
                if u.server in pending:  # superseded, and only the writer takes it out
                    taken[i] = None
            yield chunk

    def _unusable(self, exc: sqlite3.Error) -> bool:
        safe_log(
            log,
            logging.ERROR,
            "remote.state_path: %s: it became unusable (%s); running on memory only",
            self.path,
            exc,
        )
        self._active = False
        self._pending = Discard()
        self._acks = Discard()
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
