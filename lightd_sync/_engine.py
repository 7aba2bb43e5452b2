"""The sync engine: takes updates from the daemon's threads and delivers them in the background."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import weakref
from types import TracebackType
from typing import Optional, Union

from ._config import RemoteConfig, load_config
from ._core import close_quietly
from ._health import HealthMonitor
from ._lanes import Lane
from ._logutil import get_logger, safe_log
from ._model import (
    _STATUS_BY_VALUE,
    MAX_SERVER_ID_LENGTH,
    HealthState,
    Lifecycle,
    Status,
    SyncStats,
    check_server_id,
    parse_lifecycle,
    parse_status,
)
from ._reload import Reloading
from ._transports.base import Transport
from ._transports.registry import make_transport

__all__ = ["DEFAULT_WAIT", "SyncEngine"]

log = get_logger("engine")

#: What ``timeout=None`` means for :meth:`SyncEngine.close` and :meth:`SyncEngine.flush`.
DEFAULT_WAIT = 5.0

# Every engine, for the fork hook; engines with threads, for the exit hook.
# Weak: an engine the daemon dropped is not kept alive by us.
_ALL: weakref.WeakSet[SyncEngine] = weakref.WeakSet()
_OPEN: weakref.WeakSet[SyncEngine] = weakref.WeakSet()
_hooks_lock = threading.Lock()  # guards _hooks_installed
_hooks_installed = False


def _close_all_at_exit() -> None:
    """The exit hook: give all open engines one shared deadline, ``shutdown_timeout``."""
    engines = list(_OPEN)
    if not engines:
        return
    deadline = time.monotonic() + max(e.config.shutdown_timeout for e in engines)
    for engine in engines:  # stop taking updates everywhere first, so all drain at once
        engine._begin_close()
    for engine in engines:
        engine.close(timeout=max(0.0, deadline - time.monotonic()))


def _reset_all_in_child() -> None:
    for engine in list(_ALL):
        engine._reset_after_fork()


def _install_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        atexit.register(_close_all_at_exit)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_reset_all_in_child)
        _hooks_installed = True


class SyncEngine(Reloading):
    """
    Deliver status updates to the remote from a bounded pool of background threads.

    ``update``/``error``/``lifecycle`` return at once: ``True`` if queued,
    ``False`` if dropped (queue full, or engine closed). Updates of one server
    are delivered in order and never two at once; servers proceed in
    parallel, ``config.workers`` at a time. Nothing about the network ever
    raises into the caller; every update is counted in :meth:`stats`.

    Failed deliveries are retried ``config.retries`` times when that can help;
    with ``config.resync`` the latest update of every server that the remote
    missed is re-sent once it answers again.

    Threads (named ``lightd-sync-…``, daemon) start on the first call that
    needs them. :meth:`close` (or leaving a ``with`` block) delivers what it
    can until its deadline and leaves no thread behind; at interpreter exit
    open engines get ``config.shutdown_timeout`` seconds. A forked child starts
    afresh (empty queues and counters) and never touches the parent's threads.

    Args:
        config: The validated remote config.
        transport: Use this transport instead of the one *config* selects
            (for tests, or a transport built by hand); it is kept on reload.

    Raises:
        ConfigError: *config* names a transport that does not exist.
    """

    def __init__(self, config: RemoteConfig, *, transport: Optional[Transport] = None) -> None:
        if not isinstance(config, RemoteConfig):
            raise TypeError(f"config must be a RemoteConfig, not {type(config).__name__}")
        self._own_transport = transport is None
        self._init_state(config, transport if transport is not None else make_transport(config))
        self._init_lifecycle()
        self._source: Optional[str] = None
        _install_hooks()
        _ALL.add(self)

    def _init_lifecycle(self) -> None:
        self._pid: Optional[int] = None  # the process whose threads run; None: not started
        self._start_lock = threading.Lock()  # guards starting the threads once per process
        self._close_lock = threading.Lock()  # guards _close_done: one close at a time
        self._close_done = False
        self._stopping = False  # _begin_close ran (guarded by _lock)
        self._reload_lock = threading.Lock()  # one reload at a time
        self._gate: Optional[threading.Event] = None  # new lanes wait on it after a reload
        self._reload_waker: Optional[threading.Event] = None  # set by the SIGHUP handler
        self._reload_thread: Optional[threading.Thread] = None
        self._old_lanes: list[Lane] = []  # lanes a reload replaced, until they end

    @classmethod
    def from_file(
        cls, path: Union[str, os.PathLike[str]], *, transport: Optional[Transport] = None
    ) -> SyncEngine:
        """
        Build an engine from a Lightd ``config.json`` (environment overrides apply).

        :meth:`reload` without arguments re-reads the same file.

        Raises:
            ConfigError: The file cannot be read or is invalid.
        """
        engine = cls(load_config(path), transport=transport)
        engine._source = os.fspath(path)
        return engine

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._pid else "idle")
        return (
            f"<SyncEngine {state} transport={self._transport!r} "
            f"workers={self._config.workers} pending={self._pending}>"
        )

    @property
    def config(self) -> RemoteConfig:
        """The config the engine runs on."""
        return self._config

    @property
    def transport(self) -> Transport:
        """The transport updates are sent through now."""
        return self._transport

    # -- the hot path ------------------------------------------------------

    def update(self, server: str, status: Union[Status, str]) -> bool:
        """
        Queue a status update of *server*; return at once.

        Returns:
            ``True`` if queued, ``False`` if dropped (queue full, or engine closed).

        Raises:
            TypeError: *server* or *status* is not a string.
            ValueError: *server* is empty, over 255 characters or has control
                characters, or *status* is not ``installing``, ``ready`` or ``failed``.
        """
        try:
            st = _STATUS_BY_VALUE[status]
        except (KeyError, TypeError):
            st = parse_status(status)  # raises the error that says what is wrong
        if (
            type(server) is not str
            or not 0 < len(server) <= MAX_SERVER_ID_LENGTH
            or not server.isprintable()
        ):
            check_server_id(server)
        return self._submit(server, st, None)

    def error(self, server: str, message: str) -> bool:
        """
        Queue an error update of *server* (``"error": "failed"`` with *message* as ``data``).

        Returns and raises as :meth:`update`; *message* must be a string.
        """
        check_server_id(server)
        if not isinstance(message, str):
            raise TypeError(f"message must be a str, not {type(message).__name__}")
        return self._submit(server, Status.FAILED, message)

    def lifecycle(
        self, server: str, event: Union[Lifecycle, str], data: Optional[str] = None
    ) -> bool:
        """
        Queue the update that Lightd sends for a lifecycle *event* of *server*.

        ``Lifecycle.ERROR`` sends the error form with *data* as the message
        (an empty one if None); other events take no *data*.

        Returns and raises as :meth:`update`.
        """
        ev = parse_lifecycle(event)
        if ev is Lifecycle.ERROR:
            return self.error(server, "" if data is None else data)
        if data is not None:
            raise ValueError(f"data is only sent with Lifecycle.ERROR, not with {ev.value}")
        return self.update(server, ev.status)

    def _submit(self, server: str, status: Status, data: Optional[str]) -> bool:
        if self._pid != os.getpid():
            self._start()
        lock = self._lock
        lock.acquire()  # cheaper than `with` on the hot path
        try:
            if self._enqueue_locked([server, status, data, None, True]):
                return True
            due = self._drop_log.hit()
        finally:
            lock.release()
        if due is not None:
            why = (
                "the engine is closed"
                if self._closed
                else f"the queue is full ({self._queue_size})"
            )
            safe_log(
                log,
                logging.WARNING,
                "dropped %d update(s): %s (drops are summed up at most once per %g s)",
                due,
                why,
                self._drop_log.window,
            )
        return False

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> SyncEngine:
        """Start the delivery threads and the health timer (idempotent; also done lazily)."""
        if self._pid != os.getpid():
            self._start()
        return self

    def _start(self) -> None:
        if self._pid is not None and self._pid != os.getpid():
            self._reset_after_fork()  # a pre-forking server whose fork hook did not run
        with self._start_lock:
            if self._pid == os.getpid() or self._closed:
                return
            lanes = self._new_lanes(self._config.workers, None)
            monitor = HealthMonitor(self._health, self._config.health_interval)
            try:
                if sys.is_finalizing():
                    raise RuntimeError("the interpreter is shutting down")
                for lane in lanes:
                    lane.start()
                monitor.start()
            except RuntimeError as exc:  # "can't create new thread at interpreter shutdown"
                with self._lock:
                    self._closed = True
                for lane in lanes:
                    lane.stop()
                monitor.stop()
                safe_log(log, logging.WARNING, "not started: %s; updates are dropped", exc)
                return
            with self._lock:
                self._lanes, self._nlanes = lanes, len(lanes)
                self._monitor = monitor
                self._pid = os.getpid()
            _OPEN.add(self)

    def _reset_after_fork(self) -> None:
        """In a forked child: forget the parent's threads, locks, queues and counters."""
        was_closed = self._closed
        self._init_state(self._config, self._transport)
        self._init_lifecycle()
        self._closed = self._close_done = was_closed
        _OPEN.discard(self)

    def __enter__(self) -> SyncEngine:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def close(self, timeout: Optional[float] = None) -> None:
        """
        Deliver what is queued until *timeout* seconds have passed, then stop.

        Returns by the deadline even when the remote never answers: requests
        still in flight are cut off and what is left is counted as failed. No
        ``lightd-sync`` thread remains. Idempotent, safe from any thread and
        from a signal handler; later updates are dropped.

        Args:
            timeout: Seconds to wait at most; ``None`` means 5 seconds.
        """
        budget = DEFAULT_WAIT if timeout is None else max(0.0, float(timeout))
        deadline = time.monotonic() + budget
        if not self._close_lock.acquire(timeout=budget):
            return  # another thread is closing; it keeps its own deadline
        try:
            if not self._close_done:
                self._begin_close()
                self._finish_close(deadline, budget)
                self._close_done = True
        finally:
            self._close_lock.release()

    def _begin_close(self) -> None:
        """Take no more updates and tell every thread to finish what is queued."""
        with self._lock:
            self._closed = True
            if self._stopping:
                return
            self._stopping = True
            for lane in self._lanes:
                lane.stop()
            if self._gate is not None:
                self._gate.set()
            if self._reload_waker is not None:
                self._reload_waker.set()
            monitor = self._monitor
        if monitor is not None:
            monitor.stop()

    def _finish_close(self, deadline: float, budget: float) -> None:
        with self._lock:
            lanes, monitor = list(self._lanes), self._monitor
            lanes += self._old_lanes
        # Leave a little of the budget to cut off requests that never end.
        soft = deadline - min(0.1, budget / 10)
        if not all(lane.join(soft - time.monotonic()) for lane in lanes):
            self._abort.set()
        with self._tlock:
            transports = [self._transport, *self._retired]
            self._retired = []
        for transport in transports:
            close_quietly(transport)
        ended = all(lane.join(deadline - time.monotonic()) for lane in lanes)
        if monitor is not None:
            ended = monitor.join(deadline - time.monotonic()) and ended
        if self._reload_thread is not None:
            self._reload_thread.join(max(0.0, deadline - time.monotonic()))
            ended = ended and not self._reload_thread.is_alive()
        with self._lock:
            left = self._pending
            self._failed += left
            self._pending = 0
            self._final = True
            self._idle.notify_all()
            drops, fails = self._drop_log.take(), self._fail_log.take()
        _OPEN.discard(self)
        if drops:
            safe_log(log, logging.WARNING, "%d more update(s) were dropped before close", drops)
        if fails or left:
            safe_log(
                log,
                logging.ERROR,
                "%d more updates failed; %d were still pending at close and are lost",
                fails,
                left,
            )
        if not ended:
            safe_log(log, logging.WARNING, "a delivery thread did not stop by the close deadline")

    # -- waiting and observing -----------------------------------------------

    def flush(self, timeout: Optional[float] = None) -> bool:
        """
        Wait until nothing is pending.

        Args:
            timeout: Seconds to wait at most; ``None`` means 5 seconds.

        Returns:
            ``True`` if everything was delivered or given up on in time.
        """
        budget = DEFAULT_WAIT if timeout is None else max(0.0, float(timeout))
        deadline = time.monotonic() + budget
        with self._lock:
            self._flush_waiters += 1
            try:
                while self._pending > 0:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._idle.wait(remaining)
                return True
            finally:
                self._flush_waiters -= 1

    def stats(self) -> SyncStats:
        """Return a consistent snapshot of the counters."""
        with self._lock:
            return SyncStats(
                submitted=self._submitted,
                delivered=self._delivered,
                failed=self._failed,
                dropped=self._dropped,
                pending=self._pending,
                superseded=self._superseded,
                resynced=self._resynced,
            )

    @property
    def health(self) -> HealthState:
        """What the last health check found (``healthy`` is None before the first)."""
        return self._health.state

    def check_health(self) -> HealthState:
        """Check the remote's health now, in the calling thread, and return the new state."""
        return self._health.check()
