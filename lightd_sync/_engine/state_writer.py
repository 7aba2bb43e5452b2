"""
The state store's writer thread, ``lightd-sync-state``: one batch per ``flush_interval``.

:class:`~.state.StateStore` (the facade) owns a :class:`Writer` once its file
is open and talks to it through two small objects it hands over: its
:class:`~.state_rows.Pending` (what to write) and its :class:`Progress`
(what the writer reports to waiters, and what ``close()`` tells the writer).
"""

from __future__ import annotations

import logging
import operator
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

from .._logutil import Throttle, get_logger, safe_log
from .._threads import start_quietly
from .state_file import CHUNK, FileLock, Row, write_batch
from .state_rows import Pending, id_of

__all__ = ["Progress", "Writer"]

log = get_logger("state")

#: The connections of writers that a fork copied into a child. They are never
#: closed or used there: closing would make SQLite checkpoint or unlock the
#: parent's file, so the child keeps them until it exits.
_ORPHANS: list[sqlite3.Connection] = []


class Progress:
    """
    What the writer tells waiters (durability, timings) and what ``close()`` tells the writer.

    ``durable`` and ``flushes`` are read without the lock (an int read is
    atomic); they are written under it, and waiters are woken.
    """

    def __init__(self, *, closed: bool = False) -> None:
        # Guards durable, flushes, the write timings, deadline and closed. Never
        # held during I/O.
        self._cond = threading.Condition(threading.Lock())
        self.stop = threading.Event()  # close() asks the writer to write once more and stop
        self.durable = 0  # every sync point up to this one is in the file
        self.flushes = 0  # batches committed
        self._write_seconds = 0.0  # time spent in committed writes with rows, in total
        self._write_max = 0.0  # the slowest such write
        self._writes = 0  # how many such writes
        self._deadline = float("inf")  # when the writer gives up retrying its last batch
        self._closed = closed  # close() was called (a forked child's store starts closed)

    # -- the writer's side ---------------------------------------------------------

    def committed(self, mark: int, took: Optional[float]) -> None:
        """Everything before *mark* is in the file; *took*: its write's seconds, if any."""
        with self._cond:
            if took is not None:
                self._writes += 1
                self._write_seconds += took
                self._write_max = max(self._write_max, took)
            self.durable = mark
            self.flushes += 1
            self._cond.notify_all()

    def left(self) -> float:
        """Seconds until close's deadline (infinite before close())."""
        with self._cond:
            return self._deadline - time.monotonic()

    def wake(self) -> None:
        """The writer stopped: waiters look again (and see the store inactive)."""
        with self._cond:
            self._cond.notify_all()

    # -- the store's side ----------------------------------------------------------

    def timings(self) -> tuple[int, float, float]:
        """(writes with rows or acks, their total seconds, the slowest one's seconds)."""
        with self._cond:
            return self._writes, self._write_seconds, self._write_max

    def wait(self, mark: int, timeout: float, writing: Callable[[], bool]) -> bool:
        """Wait until *mark* is durable; False on timeout or once not *writing*."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.durable < mark:
                left = deadline - time.monotonic()
                if left <= 0 or not writing():
                    return False
                self._cond.wait(left)
        return True

    def close(self, wait: float) -> Optional[float]:
        """Ask the writer to stop within *wait* seconds: its deadline; None if already asked."""
        with self._cond:
            if self._closed:
                return None
            self._closed = True
            self._deadline = deadline = time.monotonic() + wait
        self.stop.set()
        return deadline


class Writer:
    """
    The writer thread and what only it touches while it runs.

    Args:
        path: The state file (for messages).
        conn: The open connection; the writer closes it.
        file_lock: The file's lock; the writer releases it.
        rows: Rows in the file.
        next_seq: The seq of the next row written: after every seq in the file.
        max_servers: Rows kept.
        flush_interval: Seconds between two batch writes.
        pending: What to write; the writer takes from it and, on a failed
            write, gives back; it discards it once the file is unusable.
        progress: Where the writer reports commits and finds close's deadline.
        event_id_of: Gives an update its event id (called on this thread).

    While the thread runs, every attribute but :attr:`running` is touched by no other thread.
    """

    def __init__(
        self,
        path: str,
        conn: sqlite3.Connection,
        file_lock: FileLock,
        *,
        rows: int,
        next_seq: int,
        max_servers: int,
        flush_interval: float,
        pending: Pending,
        progress: Progress,
        event_id_of: Callable[[Any], str],
    ) -> None:
        self.path = path
        self._conn: Optional[sqlite3.Connection] = conn
        self._file_lock: Optional[FileLock] = file_lock
        self._rows = rows
        self._next_seq = next_seq
        self._max_servers = max_servers
        self._interval = flush_interval
        self._pending = pending
        self._progress = progress
        self._event_id_of = event_id_of
        self._write_errors = Throttle()
        self._failing = False  # the last batch failed
        #: True until the file is unusable or the writer stopped (written by its thread only,
        #: or by forget_in_child() in a forked child, where that thread does not exist).
        self.running = True
        self._thread = threading.Thread(target=self._run, name="lightd-sync-state", daemon=True)

    def start(self) -> None:
        start_quietly(self._thread)

    def join(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for the thread to end; whether it did."""
        self._thread.join(max(timeout, 0.0))
        return not self._thread.is_alive()

    def forget_in_child(self) -> None:
        """In a forked child: no thread; the connection and the file lock are the parent's."""
        self.running = False
        conn, self._conn = self._conn, None
        if conn is not None:
            _ORPHANS.append(conn)
        if self._file_lock is not None:
            self._file_lock.forget_in_child()
            self._file_lock = None

    # -- the writer thread --------------------------------------------------------

    def _run(self) -> None:
        interval, stop = self._interval, self._progress.stop
        next_at = time.monotonic() + interval
        try:
            while True:
                stopping = stop.wait(max(next_at - time.monotonic(), 0.0))
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
        progress = self._progress
        while True:
            mark = progress.durable
            if self._write_once() is False or progress.durable > mark:
                return
            left = progress.left()
            if left <= 0:
                safe_log(
                    log,
                    logging.ERROR,
                    "remote.state_path: %s: could not write the last batch before close's"
                    " deadline; the updates accepted since the previous write are not in it",
                    self.path,
                )
                return
            time.sleep(min(self._interval, left))

    def _write_once(self) -> bool:
        """Write one batch. Return False once the file is unusable (the writer then stops)."""
        mark, acks, taken = self._pending.take()  # taken: updates; None once let go (_chunks)
        taken.sort(key=operator.attrgetter("accepted_at"))  # oldest first
        if len(taken) > self._max_servers:
            del taken[: len(taken) - self._max_servers]  # the file would trim them anyway
        took: Optional[float] = None
        if taken or acks:
            assert self._conn is not None
            started = time.perf_counter()
            try:
                self._rows = write_batch(
                    self._conn, self._chunks(taken), acks, self._max_servers, self._rows
                )
            except sqlite3.Error as exc:
                if type(exc) is sqlite3.DatabaseError:  # corrupt, not a database: give up
                    return self._unusable(exc)
                # Disk full, I/O error, locked by another program: keep it and retry.
                self._failing = True
                self._pending.give_back(taken, acks)
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
        self._progress.committed(mark, took)
        return True

    def _chunks(self, taken: list[Any]) -> Iterator[list[Row]]:
        """
        The rows of *taken* (oldest first), :data:`CHUNK` at a time, made as they are written.

        One chunk of rows and its JSON exist at a time, not the whole batch's.
        Rows get consecutive seqs from ``_next_seq``, in the order of *taken*.
        An update whose server has a newer one waiting in the pending updates
        leaves *taken* (None in its place) once its row is made: a retry of this
        batch would not write it (see :meth:`_write_once`), so it need not outlive its row.
        """
        event_id_of, pending = self._event_id_of, self._pending.updates
        seq = self._next_seq
        for start in range(0, len(taken), CHUNK):
            chunk: list[Row] = []
            for i in range(start, min(start + CHUNK, len(taken))):
                u = taken[i]
                event_id = u.event_id or id_of(u, event_id_of)
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
        self.running = False
        self._pending.discard()
        return False

    def _shutdown(self) -> None:
        self.running = False
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()  # the last connection: SQLite checkpoints and removes the -wal
            except sqlite3.Error as exc:
                safe_log(log, logging.WARNING, "remote.state_path: %s: %s", self.path, exc)
        if self._file_lock is not None:
            self._file_lock.release()
            self._file_lock = None
        self._progress.wake()
