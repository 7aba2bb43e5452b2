"""
An engine's running parts: its collaborators, made in one place, and its lifecycle.

:class:`Runtime` is owned by one :class:`~.engine.SyncEngine` (the facade,
which owns the public API). It makes every collaborator in one place
(:meth:`Runtime.build`: in ``__init__`` and again in a forked child, the one
fork path), owns the lifecycle state under one lock, and keeps signal
handlers that interrupted the engine from taking any lock (:meth:`Runtime.section`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from threading import get_ident
from typing import Callable, Optional, TypeVar

from .._exceptions import LightdSyncError
from .._forksafe import after_fork_in_child
from .._logutil import get_logger, safe_log
from .._threads import start_quietly
from .._transports.base import Transport
from . import exit_hook
from .health import HealthMonitor, HealthTracker
from .item import Item
from .outbox import BILLING_FULL, DROPPED, Outbox
from .pool import OutcomeHook, Pool, Reporter
from .reentry import MAIN, Reentry
from .reload import ReloadResult, SighupReload
from .settings import Settings
from .slot import TransportSlot
from .state import StateStore

__all__ = ["DEFAULT_WAIT", "Runtime"]

log = get_logger("engine")

#: What ``timeout=None`` means for ``close()`` and ``flush()``.
DEFAULT_WAIT = 5.0

_T = TypeVar("_T")


class Runtime:
    """
    The collaborators of one engine and its lifecycle (see the module).

    The facade reads ``settings`` (the frozen value to start on), ``outbox``,
    ``slot``, ``health``, ``reentry`` and ``pid``; only this class replaces
    them (``build``, ``apply``).
    """

    def __init__(
        self, settings: Settings, transport: Transport, on_outcome: Optional[OutcomeHook]
    ) -> None:
        self.settings = settings  # replaced whole by apply(), under the lifecycle lock
        self.on_outcome = on_outcome
        self.store: Optional[StateStore] = None  # the state file, once open_store() opened it
        self.build(transport)
        after_fork_in_child(self.after_fork_in_child)  # the one fork hook (held weakly)

    def build(self, transport: Transport) -> None:
        """Make every collaborator and the lifecycle state: in __init__ and in a forked child."""
        config, policy = self.settings.config, self.settings.policy
        self.outbox = outbox = Outbox(config.queue_size, config.max_servers, config.queue_size)
        outbox.resync = config.resync
        outbox.store = self.store
        self.slot = TransportSlot(transport)
        self.reporter = Reporter(outbox, self.on_outcome)
        self.pool = pool = Pool(outbox, self.slot, self.reporter, policy, on_missed=self._probe,
                                between=self.admit_deferred)  # fmt: skip
        self.health = HealthTracker(self._check_transport, on_healthy=self._resync)
        pool.secret = self.health.secret = config.token
        self.reentry = Reentry(self._hand_on)
        # Guards pid, closing, _monitor, _sighup and the swap of settings (read
        # without it: one attribute, replaced whole); never held by a signal
        # handler that interrupted the engine (see Reentry.section()).
        self._lifecycle = threading.Lock()
        self.reload_lock = threading.Lock()  # one reload at a time (it builds a transport)
        self.pid: Optional[int] = None  # the process whose threads run; None: not started
        self.closing = False  # close() began: nothing starts any more
        self.closed = threading.Event()  # close() finished
        self._monitor: Optional[HealthMonitor] = None
        self._sighup: Optional[SighupReload] = None

    def after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's threads, locks, queues, counters and file."""
        closing = self.closing
        MAIN.renew()
        store, self.store = self.store, None
        if store is not None:
            store.forget_in_child()  # the file is the parent's: a child never writes it
        self.build(self.slot.current)
        if closing:
            self.closing = True
            self.outbox.finish()
            self.closed.set()
        exit_hook.forget(self)

    def open_store(self, path: str) -> None:
        """Open the state file; seed the outbox with what the remote never acknowledged."""
        store = StateStore(path, max_servers=self.settings.config.max_servers)
        store.event_id_of = self.outbox.event_id
        rows = store.open()
        if not store.active:  # a bad file: logged by the store; run on memory only
            return
        self.store = self.outbox.store = store
        exit_hook.close_at_exit(self)  # its writer thread runs: the exit hook must close it
        for row in rows:
            self.outbox.seed(
                Item(row.server, row.status, row.data, row.error, event_id=row.event_id)
            )
        if rows:
            safe_log(
                log,
                logging.INFO,
                "remote.state_path: %d servers' latest updates were never acknowledged; "
                "they are re-sent once the remote is healthy",
                len(rows),
            )

    # -- the caller's path -----------------------------------------------------------

    def submit(self, item: Item) -> bool:
        """Admit *item*: ``True`` if queued; a handler that interrupted the engine defers it."""
        if get_ident() != MAIN.ident:  # no signal handler runs in this thread
            if self.pid != os.getpid():
                self.start()
            return self.admit(item)
        reentry = self.reentry
        if reentry.inside:  # a handler that interrupted the engine: no lock, O(1)
            reentry.deferred.append(item)
            return True
        if self.pid != os.getpid():
            self.start()
        reentry.inside = True
        try:
            if item.billing is None:
                dropped = self.outbox.admit(item)
            else:
                dropped = self.outbox.admit_billing(item)
        finally:
            reentry.inside = False
        if reentry.deferred or reentry.close_wanted is not None:  # reentry.wanted, inlined
            self._hand_on()
        return True if dropped is None else self._dropped(item, dropped)

    def admit(self, item: Item) -> bool:
        """Admit *item* from a thread no signal handler interrupts."""
        outbox = self.outbox
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
                why.get(reason, f"the queue is full ({self.outbox.queue_size})"),
                self.outbox.drop_window(),
            )
        if self.on_outcome is not None:
            if item.event_id is None:
                with self.reentry.section():  # the outbox lock: no handler deadlocks on it
                    self.outbox.event_id(item)
            self.reporter.notify(item, DROPPED, reason)
        return False

    def admit_deferred(self) -> None:
        """
        A worker (or close, once the engine is closed) admits what signal handlers deferred.

        In the main thread (close) it runs as a section: a handler meanwhile
        defers again, and the loop takes that too (each is a cheap drop then).
        """
        deferred = self.reentry.deferred
        with self.reentry.section():
            while deferred:
                try:
                    item = deferred.popleft()
                except IndexError:  # another worker took the last one
                    return
                self.admit(item)

    # -- signal handlers ---------------------------------------------------------------

    def _hand_on(self) -> None:
        """
        After a section: hand on what handlers left (main thread, not inside the engine).

        Constant cost: a close a handler asked for starts its thread; deferred
        updates only wake a worker, which admits them.
        """
        reentry = self.reentry
        close_budget, reentry.close_wanted = reentry.close_wanted, None
        reentry.inside = True  # a handler meanwhile defers again, and is handed on next time
        try:
            if close_budget is not None:
                self.outbox.close()
            elif reentry.deferred and self.pid == os.getpid():
                self.outbox.wake()
        finally:
            reentry.inside = False
        if close_budget is not None:
            args, name = (close_budget,), "lightd-sync-close"
            start_quietly(threading.Thread(target=self.close, args=args, name=name, daemon=True))

    def read(self, name: str, read: Callable[[Outbox], _T]) -> _T:
        """What *read* finds in the outbox, under its lock (refused in an interrupting handler)."""
        self.reentry.refuse(name)
        with self.reentry.section():
            return read(self.outbox)

    # -- start, wait, close --------------------------------------------------------

    def start(self) -> None:
        """Start the workers and the health timer in this process (once; also after a fork)."""
        with self.reentry.section(), self._lifecycle:
            if self.pid is not None and self.pid != os.getpid():
                self.after_fork_in_child()  # the fallback: a fork whose hook did not run
                return self.start()
            if self.pid == os.getpid() or self.closing:
                return None
            self.pid = os.getpid()
            monitor = HealthMonitor(self.health, self.settings.config.health_interval)
            try:
                if sys.is_finalizing():
                    raise RuntimeError("the interpreter is shutting down")
                self.pool.resize(self.settings.config.workers)
                monitor.start()
            except RuntimeError as exc:  # "can't create new thread at interpreter shutdown"
                self.closing = True
                self.outbox.close()
                self.outbox.finish()  # what was queued meanwhile fails (closed)
                self.closed.set()
                safe_log(log, logging.WARNING, "not started: %s; updates are dropped", exc)
                return None
            self._monitor = monitor
        exit_hook.close_at_exit(self)
        return None

    def wait_idle(self, seconds: float) -> bool:
        """Wait up to *seconds* until nothing is pending (see ``SyncEngine.flush``)."""
        reentry = self.reentry
        if reentry.interrupted():
            return not reentry.deferred and not self.outbox.stats_unlocked().pending
        end = time.monotonic() + seconds
        while True:
            with self.reentry.section():
                if reentry.deferred and self.pid == os.getpid():
                    self.outbox.wake()
                idle = self.outbox.idle_event()
            if idle is None and not reentry.deferred:
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            if idle is None:  # only what handlers deferred: a worker admits it shortly
                time.sleep(min(left, 0.005))
            else:
                idle.wait(min(left, threading.TIMEOUT_MAX))

    def stop_for_exit(self) -> float:
        """The exit hook's first step: take no more updates; return how long to drain."""
        with self.reentry.section():
            self.outbox.close()
        return self.settings.config.shutdown_timeout

    def request_close(self, seconds: float) -> None:
        """Close within *seconds*; from a handler that interrupted the engine, soon after it."""
        if self.reentry.interrupted():
            self.reentry.close_wanted = seconds  # handed on once the section ends
        else:
            self.close(seconds)

    def close(self, timeout: float) -> None:
        """Deliver what is queued for up to *timeout* seconds, then stop (``SyncEngine.close``)."""
        deadline = time.monotonic() + timeout
        with self.reentry.section(), self._lifecycle:
            first = not self.closing
            self.closing = True
            monitor, sighup = self._monitor, self._sighup
            self.outbox.close()  # the workers end once what is pending is settled
        if not first:  # another call is closing: wait for it, within our own deadline
            with self.reentry.section():  # a handler meanwhile must not wait on this very Event
                done = self.closed.wait(max(0.0, deadline - time.monotonic()))
            if done:
                self.admit_deferred()  # what handlers deferred since: dropped (closed), counted
            return
        try:
            self._finish_close(monitor, sighup, deadline, timeout)
        finally:
            self.closed.set()
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
        self.pool.join(deadline - min(0.1, seconds / 10))
        with self.reentry.section():
            # Time is up: what is pending fails (closed), the workers end after
            # their request, and closing the transport cuts off what is in flight.
            left, drops, fails = self.outbox.finish()
            self.slot.close_all()
        ended = self.pool.join(deadline)
        if monitor is not None:
            ended = monitor.join(deadline) and ended
        if sighup is not None:
            ended = sighup.stop(deadline) and ended
        self.admit_deferred()  # dropped now (closed), and counted
        store = self.store
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

    # -- reload --------------------------------------------------------------------------

    def apply(
        self, settings: Settings, transport: Optional[Transport], changed: set[str]
    ) -> Optional[Transport]:
        """Swap in the new settings value; return a transport to close (no lock held then)."""
        config = settings.config
        with self.reentry.section(), self._lifecycle:
            if self.closing:
                raise LightdSyncError("reload: the engine is closed")
            self.settings = settings
            self.outbox.resize(config.queue_size, config.max_servers, config.resync)
            if self.store is not None:
                self.store.max_servers = config.max_servers
            self.pool.policy = settings.policy
            self.pool.secret = self.health.secret = config.token
            old = self.slot.swap(transport) if transport is not None else None
            if self.pid == os.getpid():
                self.pool.resize(config.workers)
            monitor = self._monitor
        if monitor is not None:
            monitor.interval = config.health_interval
            if {"url", "token", "transport", "enabled"} & changed:
                self.health.reset()
            monitor.poke(0.0)
        return old

    def install_sighup(self, reload: Callable[[], ReloadResult]) -> None:
        """Have a ``lightd-sync-reload`` thread call *reload* on ``SIGHUP`` (once)."""
        with self.reentry.section(), self._lifecycle:
            if self.closing or self._sighup is not None:
                return
            self._sighup = sighup = SighupReload(reload)
        sighup.install()

    # -- health glue --------------------------------------------------------------------
    def _check_transport(self) -> None:
        with self.reentry.section():  # a handler's close() must not wait on the slot's lock
            transport = self.slot.acquire()
        try:
            transport.check_health()  # a failed check raises: HealthTracker records it
        finally:
            with self.reentry.section():
                self.slot.release(transport)

    def _probe(self) -> None:  # an update was missed: check health soon
        monitor = self._monitor
        if monitor is not None:
            monitor.probe()

    def _resync(self) -> None:
        """After every healthy check: queue again what the remote missed and is due."""
        with self.reentry.section():
            sent, waiting = self.outbox.resync_due(self.settings.policy.resync_interval)
        if sent:
            safe_log(
                log, logging.INFO,
                "re-sending the latest status of %d servers the remote missed (%d more wait)",
                sent, waiting,
            )  # fmt: skip
