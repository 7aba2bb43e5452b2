"""
The state store: the latest update of each server, and whether the remote
acknowledged it, kept in one file that survives a ``kill -9``.

The caller's thread only stores into two dicts; one library thread,
``lightd-sync-state``, writes them to the file (see :mod:`._state_file`)
in one transaction every ``flush_interval`` seconds.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from typing import Any, Callable, Optional, Union

from .._logutil import get_logger, safe_log
from .state_file import FileLock, StateFileError, connect, load, move_aside
from .state_rows import (
    Accepted,
    Pending,
    StoredUpdate,
    own_event_id,
    parse_rows,
)
from .state_writer import Progress, Writer

__all__ = ["CLOSE_GRACE", "FLUSH_INTERVAL", "StateStore", "StoredUpdate"]

log = get_logger("state")

#: Default seconds between two batch writes: the durability window's first term.
FLUSH_INTERVAL = 0.1

#: The least time close() gives the last write, whatever its timeout: the
#: last batch is one local transaction (milliseconds), and what close() is
#: for. Only a hung or failing disk makes close() wait this long.
CLOSE_GRACE = 0.5


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

    The store is a facade over three collaborators, each the one owner of its
    state: a :class:`~.state_rows.Pending` (what callers gave and the writer
    has not taken; no lock), a :class:`~.state_writer.Progress` (what the
    writer reports and what close() tells it; one lock) and, once :meth:`open`
    opened the file, a :class:`~.state_writer.Writer` (the thread
    ``lightd-sync-state``, the connection, the file lock).

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
        self._pending = Pending()
        self._progress = Progress()
        self._opened = False  # open() was called (it is called once)
        self._writer: Optional[Writer] = None  # set once by open(), dropped in a forked child
        #: Gives an update its event id (the outbox's; called by the writer
        #: thread). Set it before :meth:`open`.
        self.event_id_of: Callable[[Any], str] = own_event_id

    # -- the caller's side ------------------------------------------------------

    @property
    def active(self) -> bool:
        """True while updates go to the file; False: memory only (a bad file, a fork, closed)."""
        writer = self._writer
        return writer is not None and writer.running

    @property
    def flush_count(self) -> int:
        """How many batches the writer has committed to the file."""
        return self._progress.flushes

    def write_timings(self) -> tuple[int, float, float]:
        """Return (writes with rows or acks, their total seconds, the slowest one's seconds)."""
        return self._progress.timings()

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
        self._pending.updates[server] = update

    def acknowledged(self, server: str, event_id: str) -> None:
        """The remote acknowledged *event_id*; if it is still *server*'s latest, mark it."""
        self._pending.acks[server] = event_id

    def sync_point(self) -> int:
        """Return a mark: :meth:`flushed` (mark) is true once all accepted before it is written."""
        return next(self._pending.marks)

    def flushed(self, mark: int) -> bool:
        """Whether every update and acknowledgement given before *mark* is in the file."""
        return self._progress.durable >= mark

    def wait_flushed(self, timeout: float) -> bool:
        """
        Wait until everything given to this store before the call is in the file.

        Returns False on timeout or when the store is not writing (inactive, closed).
        """
        mark = self.sync_point()
        return self._progress.wait(mark, timeout, lambda: self.active)

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
            file_lock = FileLock(self.path)  # ConfigError propagates
        except OSError as exc:
            return self._memory_only(
                f"cannot create its lock file {self.path}.lock: {exc.strerror}"
            )
        try:
            conn = self._connect()
            try:
                raw, top = load(conn, self.max_servers)
            except sqlite3.Error as exc:
                conn.close()
                raise StateFileError(f"SQLite cannot read it: {exc}") from None
        except StateFileError as exc:
            file_lock.release()
            return self._memory_only(exc.reason)
        writer = Writer(
            self.path,
            conn,
            file_lock,
            rows=len(raw),
            next_seq=top + 1,
            max_servers=self.max_servers,
            flush_interval=self.flush_interval,
            pending=self._pending,
            progress=self._progress,
            event_id_of=self.event_id_of,
        )
        rows, skipped = parse_rows(raw)
        del raw
        if skipped:
            safe_log(
                log, logging.ERROR,
                "remote.state_path: %s: skipped %d rows that are not valid updates",
                self.path, skipped,
            )  # fmt: skip
        writer.start()
        self._writer = writer
        return rows

    def _precheck(self) -> Optional[str]:
        folder = os.path.dirname(os.path.abspath(self.path))
        if os.path.isdir(self.path):
            return "it is a folder, not a file"
        if not os.path.isdir(folder):
            return f"its folder {folder} does not exist (lightd-sync does not create it)"
        return None

    def _connect(self) -> sqlite3.Connection:
        """Connect; a file that is not a state file of ours is moved aside first."""
        try:
            return connect(self.path)
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
        return connect(self.path)  # a StateFileError now is a new problem: memory only

    def _memory_only(self, problem: str) -> list[StoredUpdate]:
        safe_log(
            log,
            logging.ERROR,
            "remote.state_path: %s: %s; running on memory only: the latest status of"
            " servers the remote has not acknowledged will not survive a restart",
            self.path,
            problem,
        )
        self._pending.discard()
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
        deadline = self._progress.close(wait)
        writer = self._writer
        if deadline is None or writer is None:
            return True
        if not writer.join(deadline - time.monotonic()):
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
        self._progress = Progress(closed=True)  # the parent's lock may be held: a new one
        self._pending.discard()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.forget_in_child()
