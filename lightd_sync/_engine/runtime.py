"""
The engine's lifecycle: its collaborators, start, close, the fork path, health glue.

:class:`Runtime` is the base of :class:`~.engine.SyncEngine`: it makes every
collaborator in one place (:meth:`Runtime._build`, in ``__init__`` and again
in a forked child), owns the lifecycle state under one lock, and keeps signal
handlers that interrupted the engine from taking any lock (:meth:`Runtime._section`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from threading import get_ident
from types import TracebackType
from typing import Optional, TypeVar

from .._config import RemoteConfig
from .._exceptions import LightdSyncError
from .._logutil import get_logger, safe_log
from .._transports.base import Transport
from . import exit_hook
from .health import HealthMonitor, HealthTracker
from .item import Item
from .outbox import BILLING_FULL, DROPPED, Outbox
from .pool import OutcomeHook, Pool, Reporter
from .reentry import MAIN, Reentry
from .reload import SighupReload
from .settings import Settings, budget
from .slot import TransportSlot
from .state import StateStore

__all__ = ["DEFAULT_WAIT", "Runtime"]

log = get_logger("engine")

#: What ``timeout=None`` means for ``close()`` and ``flush()``.
DEFAULT_WAIT = 5.0

_R = TypeVar("_R", bound="Runtime")


class Runtime:
    """The lifecycle half of :class:`~lightd_sync.SyncEngine` (see the module)."""

    _settings: Settings
    _on_outcome: Optional[OutcomeHook]
    _store: Optional[StateStore]
    _source: Optional[str]
    _own_transport: bool

    @property
    def config(self) -> RemoteConfig:
        """The config the engine runs on."""
        return self._settings.config

    def _build(self, transport: Transport) -> None:
        """Make every collaborator and the lifecycle state: in __init__ and in a forked child."""
        config, policy = self._settings.config, self._settings.policy
        self._outbox = outbox = Outbox(config.queue_size, config.max_servers, config.queue_size)
        outbox.resync = config.resync
        self._slot = TransportSlot(transport)
        self._reporter = Reporter(outbox, self._on_outcome)
        self._pool = Pool(
            outbox,
            self._slot,
            self._reporter,
            policy,
            on_missed=self._probe,
            between=self._admit_deferred,
        )
        self._health = HealthTracker(self._check_transport, on_healthy=self._resync)
        self._pool.secret = self._health.secret = config.token
        self._reentry = Reentry()
        # Guards _pid, _closing, _monitor and _sighup; never held by a signal
        # handler that interrupted the engine (see _section).
        self._lifecycle = threading.Lock()
        self._reload_lock = threading.Lock()  # one reload at a time (it builds a transport)
        self._pid: Optional[int] = None  # the process whose threads run; None: not started
        self._closing = False  # close() began: nothing starts any more
        self._closed = threading.Event()  # close() finished
        self._monitor: Optional[HealthMonitor] = None
        self._sighup: Optional[SighupReload] = None

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's threads, locks, queues, counters and file."""
        closing = self._closing
        MAIN.renew()
        store, self._store = self._store, None
        if store is not None:
            store.forget_in_child()  # the file is the parent's: a child never writes it
        self._build(self._slot.current)
        if closing:
            self._closing = True
            self._outbox.finish()
            self._closed.set()
        exit_hook.forget(self)

    def _open_store(self, path: str) -> None:
        """Open the state file; seed the outbox with what the remote never acknowledged."""
        store = StateStore(path, max_servers=self._settings.config.max_servers)
        store.event_id_of = self._outbox.event_id
        rows = store.open()
        if not store.active:  # a bad file: logged by the store; run on memory only
            return
        self._store = self._outbox.store = store
        exit_hook.close_at_exit(self)  # its writer thread runs: the exit hook must close it
        for row in rows:
            item = Item(row.server, row.status, row.data, row.error, event_id=row.event_id)
            self._outbox.seed(item)
        if rows:
            safe_log(
                log,
                logging.INFO,
                "remote.state_path: %d servers' latest updates were never acknowledged; "
                "they are re-sent once the remote is healthy",
                len(rows),
            )

    def _admit(self, item: Item) -> bool:
        """Admit *item* from a thread no signal handler interrupts."""
        outbox = self._outbox
        dropped = outbox.admit(item) if item.billing is None else outbox.admit_billing(item)
        return True if dropped is None else self._dropped(item, dropped)

    def _dropped(self, item: Item, dropped: tuple[str, int]) -> bool:
        """Log (throttled) and report *item*, which the outbox did not queue; return False."""
        reason, due = dropped
        if due:
            why = {"closed": "the engine is closed", BILLING_FULL: "the billing queue is full"}
            safe_log(
                log,
                logging.WARNING,
                "dropped %d update(s): %s (drops are summed up at most once per %g s)",
                due,
                why.get(reason, f"the queue is full ({self._outbox.queue_size})"),
                self._outbox.drop_window(),
            )
        if self._on_outcome is not None and item.event_id is None:
            with self._section():  # the outbox lock, taken where a handler cannot deadlock on it
                self._outbox.event_id(item)
        self._reporter.notify(item, DROPPED, reason)
        return False

    def _admit_deferred(self) -> None:
        """
        A worker (or close, once the engine is closed) admits what signal handlers deferred.

        In the main thread (close) it runs as a section: a handler meanwhile
        defers again, and the loop takes that too (each is a cheap drop then).
        """
        deferred = self._reentry.deferred
        with self._section():
            while deferred:
                try:
                    item = deferred.popleft()
                except IndexError:  # another worker took the last one
                    return
                self._admit(item)

    @contextlib.contextmanager
    def _section(self) -> Iterator[None]:
        """Mark the main thread inside the engine while it may hold a lock a handler wants."""
        reentry = self._reentry
        if get_ident() != MAIN.ident or reentry.inside:
            yield
            return
        reentry.inside = True
        try:
            yield
        finally:
            reentry.inside = False
            if reentry.wanted:
                self._hand_on()

    def _hand_on(self) -> None:
        """
        After a section: hand on what handlers left (main thread, not inside the engine).

        Constant cost: a close a handler asked for starts its thread; deferred
        updates only wake a worker, which admits them.
        """
        reentry = self._reentry
        close_budget, reentry.close_wanted = reentry.close_wanted, None
        reentry.inside = True  # a handler meanwhile defers again, and is handed on next time
        try:
            if close_budget is not None:
                self._outbox.close()
            elif reentry.deferred and self._pid == os.getpid():
                self._outbox.wake()
        finally:
            reentry.inside = False
        if close_budget is not None:
            name = "lightd-sync-close"
            threading.Thread(
                target=self._close, args=(close_budget,), name=name, daemon=True
            ).start()

    def start(self: _R) -> _R:
        """Start the delivery threads and the health timer (idempotent; also done lazily)."""
        if self._pid != os.getpid() and not self._reentry.interrupted():
            self._start()
        return self

    def _start(self) -> None:
        with self._section(), self._lifecycle:
            if self._pid is not None and self._pid != os.getpid():
                self._after_fork_in_child()  # the fallback: a fork whose hook did not run
                return self._start()
            if self._pid == os.getpid() or self._closing:
                return None
            self._pid = os.getpid()
            monitor = HealthMonitor(self._health, self.config.health_interval)
            try:
                if sys.is_finalizing():
                    raise RuntimeError("the interpreter is shutting down")
                self._pool.resize(self.config.workers)
                monitor.start()
            except RuntimeError as exc:  # "can't create new thread at interpreter shutdown"
                self._closing = True
                self._outbox.close()
                self._outbox.finish()  # what was queued meanwhile fails (closed)
                self._closed.set()
                safe_log(log, logging.WARNING, "not started: %s; updates are dropped", exc)
                return None
            self._monitor = monitor
        exit_hook.close_at_exit(self)
        return None

    def __enter__(self: _R) -> _R:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def _stop_for_exit(self) -> float:
        """The exit hook's first step: take no more updates; return how long to drain."""
        with self._section():
            self._outbox.close()
        return self.config.shutdown_timeout

    def close(self, timeout: Optional[float] = None) -> None:
        """
        Deliver what is queued until *timeout* seconds have passed, then stop.

        Returns by the deadline even when the remote never answers: requests
        still in flight are cut off and what is left is counted as failed
        (reason ``closed``). No ``lightd-sync`` thread remains, except one
        blocked in a DNS lookup, which cannot be interrupted and ends by itself
        within ``timeout``. Idempotent, safe from any thread, concurrently
        with any other call, and from a signal handler (one that interrupted
        the engine's own call returns at once: a ``lightd-sync-close`` thread
        closes the engine as soon as that call is out of its critical section).

        Args:
            timeout: Seconds to wait at most (any non-negative number,
                however large, ``math.inf`` included); ``None`` means 5 seconds.
        """
        seconds = budget(timeout, DEFAULT_WAIT)
        if self._reentry.interrupted():
            self._reentry.close_wanted = seconds  # handed on once the section ends
        else:
            self._close(seconds)

    def _close(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with self._section(), self._lifecycle:
            first = not self._closing
            self._closing = True
            monitor, sighup = self._monitor, self._sighup
            self._outbox.close()  # the workers end once what is pending is settled
        if not first:  # another call is closing: wait for it, within our own deadline
            with self._section():  # a handler meanwhile must not wait on this very Event
                done = self._closed.wait(max(0.0, deadline - time.monotonic()))
            if done:
                self._admit_deferred()  # what handlers deferred since: dropped (closed), counted
            return
        try:
            self._finish_close(monitor, sighup, deadline, seconds)
        finally:
            self._closed.set()
            exit_hook.forget(self)

    def _finish_close(
        self,
        monitor: Optional[HealthMonitor],
        sighup: Optional[SighupReload],
        deadline: float,
        seconds: float,
    ) -> None:
        if monitor is not None:
            monitor.stop()
        # Leave a little of the budget to cut off requests that never end.
        self._pool.join(deadline - min(0.1, seconds / 10))
        with self._section():
            # Time is up: what is pending fails (closed), the workers end after
            # their request, and closing the transport cuts off what is in flight.
            left, drops, fails = self._outbox.finish()
            self._slot.close_all()
        ended = self._pool.join(deadline)
        if monitor is not None:
            ended = monitor.join(deadline) and ended
        if sighup is not None:
            ended = sighup.stop(deadline) and ended
        self._admit_deferred()  # dropped now (closed), and counted
        store = self._store
        if store is not None:  # what was accepted and acknowledged, written before we return
            store.close(deadline - time.monotonic())
        if drops:
            safe_log(log, logging.WARNING, "%d more update(s) were dropped before close", drops)
        if fails or left:
            safe_log(
                log, logging.ERROR,
                "%d more updates failed; %d were still pending at close and are lost",
                fails, left,
            )  # fmt: skip
        if not ended:
            safe_log(log, logging.WARNING, "a delivery thread did not stop by the close deadline")

    def _check_transport(self) -> None:
        with self._section():
            transport = self._slot.acquire()
        try:
            transport.check_health()  # a failed check raises: HealthTracker records it
        finally:
            with self._section():
                self._slot.release(transport)

    def _probe(self) -> None:
        monitor = self._monitor
        if monitor is not None:
            monitor.probe()

    def _resync(self) -> None:
        """After every healthy check: queue again what the remote missed and is due."""
        with self._section():
            sent, waiting = self._outbox.resync_due(self._settings.policy.resync_interval)
        if sent:
            safe_log(
                log,
                logging.INFO,
                "re-sending the latest status of %d servers the remote missed (%d more wait)",
                sent,
                waiting,
            )

    def _refuse_in_handler(self, name: str) -> None:
        if self._reentry.interrupted():
            raise LightdSyncError(
                f"{name}: called from a signal handler that interrupted the engine; "
                "call it outside the handler (stats() works there)"
            )
