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
from typing import Any, Optional, Union

from ._config import RemoteConfig, load_config
from ._exceptions import DeliveryError
from ._health import HealthMonitor, HealthTracker
from ._lanes import Lane
from ._logutil import Throttle, get_logger, safe_log
from ._model import (
    _STATUS_BY_VALUE,
    HealthState,
    Lifecycle,
    Status,
    SyncStats,
    Update,
    check_server_id,
    parse_lifecycle,
    parse_status,
)
from ._transports.base import Transport
from ._transports.registry import make_transport

__all__ = ["DEFAULT_WAIT", "SHUTDOWN_TIMEOUT", "SyncEngine"]

log = get_logger("engine")

#: What ``timeout=None`` means for :meth:`SyncEngine.close` and :meth:`SyncEngine.flush`.
DEFAULT_WAIT = 5.0
#: How long the interpreter waits at exit for all open engines together.
SHUTDOWN_TIMEOUT = 2.0
_MAX_SERVER = 255

_DELIVERED, _FAILED = True, False

# Engines that have started threads, for the exit hook. Weak: an engine the
# daemon dropped is not kept alive by us.
_OPEN: weakref.WeakSet[SyncEngine] = weakref.WeakSet()
_atexit_registered = False
_atexit_lock = threading.Lock()  # guards _atexit_registered


def _close_all_at_exit() -> None:
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT
    for engine in list(_OPEN):
        engine.close(timeout=max(0.0, deadline - time.monotonic()))


def _register_atexit() -> None:
    global _atexit_registered
    with _atexit_lock:
        if not _atexit_registered:
            atexit.register(_close_all_at_exit)
            _atexit_registered = True


class SyncEngine:
    """
    Deliver status updates to the remote from a bounded pool of background threads.

    ``update``/``error``/``lifecycle`` return at once: ``True`` if queued,
    ``False`` if dropped (queue full, or engine closed). Updates of one server
    are delivered in order and never two at once; servers proceed in
    parallel, ``config.workers`` at a time. Nothing about the network ever
    raises into the caller; every update is counted in :meth:`stats`.

    Threads (named ``lightd-sync-…``, daemon) start on the first call that
    needs them. :meth:`close` (or leaving a ``with`` block) delivers what it
    can until its deadline and leaves no thread behind.

    Args:
        config: The validated remote config.
        transport: Use this transport instead of the one *config* selects
            (for tests, or a transport built by hand).

    Raises:
        ConfigError: *config* names a transport that does not exist.
    """

    def __init__(self, config: RemoteConfig, *, transport: Optional[Transport] = None) -> None:
        if not isinstance(config, RemoteConfig):
            raise TypeError(f"config must be a RemoteConfig, not {type(config).__name__}")
        self._config = config
        self._source: Optional[str] = None
        self._transport = transport if transport is not None else make_transport(config)
        # _lock guards the counters, the lanes' queues (every put happens under
        # it, so nothing lands behind a lane's STOP), _closed, _abandoned and
        # _final. Reentrant: close() may run in a signal handler that
        # interrupted update() in the same thread.
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)  # notified when pending hits 0
        self._flush_waiters = 0
        self._submitted = self._delivered = self._failed = self._dropped = self._pending = 0
        self._queue_size = config.queue_size
        self._closed = False  # no new updates
        self._abandoned = False  # close() ran out of time: fail what is left
        self._final = False  # counters are final; late outcomes are ignored
        self._drop_log = Throttle()
        self._fail_log = Throttle()
        self._fail_streak = False
        self._lanes: list[Lane] = []
        self._nlanes = 0
        self._pid: Optional[int] = None  # the process whose threads run; None: not started
        self._start_lock = threading.Lock()  # guards starting the threads once
        self._close_lock = threading.Lock()  # guards _close_done: one close at a time
        self._close_done = False
        self._health = HealthTracker(self._transport_check)
        self._monitor: Optional[HealthMonitor] = None

    @classmethod
    def from_file(
        cls, path: Union[str, os.PathLike[str]], *, transport: Optional[Transport] = None
    ) -> SyncEngine:
        """
        Build an engine from a Lightd ``config.json`` (environment overrides apply).

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
        """The transport updates are sent through."""
        return self._transport

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> SyncEngine:
        """Start the delivery threads and the health timer (idempotent; also done lazily)."""
        if self._pid != os.getpid():
            self._start()
        return self

    def _start(self) -> None:
        with self._start_lock:
            if self._pid == os.getpid() or self._closed:
                return
            if sys.is_finalizing():  # threads cannot start any more
                self._closed = True
                return
            lanes = [Lane(i, self._deliver) for i in range(self._config.workers)]
            monitor = HealthMonitor(self._health, self._config.health_interval)
            for lane in lanes:
                lane.start()
            monitor.start()
            with self._lock:
                self._lanes, self._nlanes = lanes, len(lanes)
                self._monitor = monitor
                self._pid = os.getpid()
            _OPEN.add(self)
            _register_atexit()

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
        ``lightd-sync`` thread remains. Idempotent; later updates are dropped.

        Args:
            timeout: Seconds to wait at most; ``None`` means 5 seconds.
        """
        budget = DEFAULT_WAIT if timeout is None else max(0.0, float(timeout))
        deadline = time.monotonic() + budget
        if not self._close_lock.acquire(timeout=budget):
            return  # another thread is closing; it keeps its own deadline
        try:
            if self._close_done:
                return
            self._close(deadline, budget)
            self._close_done = True
        finally:
            self._close_lock.release()

    def _close(self, deadline: float, budget: float) -> None:
        with self._lock:
            self._closed = True
            lanes, monitor = self._lanes, self._monitor
            for lane in lanes:
                lane.stop()
        if monitor is not None:
            monitor.stop()
        # Leave a little of the budget to cut off requests that never end.
        soft = deadline - min(0.1, budget / 10)
        drained = all(lane.join(soft - time.monotonic()) for lane in lanes)
        if not drained:
            with self._lock:
                self._abandoned = True
        self._close_transport(self._transport)
        ended = all(lane.join(deadline - time.monotonic()) for lane in lanes)
        if monitor is not None:
            ended = monitor.join(deadline - time.monotonic()) and ended
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

    @staticmethod
    def _close_transport(transport: Transport) -> None:
        try:
            transport.close()
        except Exception as exc:
            safe_log(log, logging.WARNING, "closing the transport raised %r", exc)

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
            or not 0 < len(server) <= _MAX_SERVER
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
        with self._lock:
            self._submitted += 1
            if not self._closed and self._pending < self._queue_size:
                self._pending += 1
                self._lanes[hash(server) % self._nlanes].put((server, status, data))
                return True
            self._dropped += 1
            due = self._drop_log.hit()
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

    # -- delivery (lane threads) -------------------------------------------

    def _deliver(self, item: Any) -> None:
        server, status, data = item
        if self._abandoned:
            self._settle(_FAILED, None)
            return
        try:
            self._transport.send(Update(server, status, data))
        except DeliveryError as exc:
            self._settle(_FAILED, f"update of {server} ({status.value}) failed: {exc.message}")
        except Exception as exc:
            self._settle(_FAILED, f"update of {server}: the transport raised {exc!r}")
        else:
            self._settle(_DELIVERED, None)

    def _settle(self, outcome: bool, reason: Optional[str]) -> None:
        first = False
        due: Optional[int] = None
        held = 0
        with self._lock:
            if self._final:
                return
            self._pending -= 1
            if outcome is _DELIVERED:
                self._delivered += 1
                if self._fail_streak:  # report what the window held back
                    self._fail_streak = False
                    held = self._fail_log.take()
            else:
                self._failed += 1
                if reason is not None:
                    if not self._fail_streak:
                        self._fail_streak = first = True
                        self._fail_log.restart()
                    else:
                        due = self._fail_log.hit()
            if self._pending == 0 and self._flush_waiters:
                self._idle.notify_all()
        if first:
            safe_log(log, logging.ERROR, "%s", reason)
        elif due:
            safe_log(log, logging.ERROR, "%d more updates failed; last: %s", due, reason)
        elif held:
            safe_log(log, logging.ERROR, "%d more updates failed before delivery recovered", held)

    # -- waiting and observing ---------------------------------------------

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
            )

    @property
    def health(self) -> HealthState:
        """What the last health check found (``healthy`` is None before the first)."""
        return self._health.state

    def check_health(self) -> HealthState:
        """Check the remote's health now, in the calling thread, and return the new state."""
        return self._health.check()

    def _transport_check(self) -> None:
        self._transport.check_health()
