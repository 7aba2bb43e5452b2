"""
The sync engine: the facade that owns the public API and the lifecycle.

One owner per piece of state (see ``docs/engine.md``): the
:class:`~.outbox.Outbox` owns every per-server fact and every counter; the
:class:`~.pool.Pool` owns the worker threads; the :class:`~.slot.TransportSlot`
the transport in use; the :class:`~.health.HealthTracker` and
:class:`~.health.HealthMonitor` the health state and its timer thread; the
:class:`~.state.StateStore` the state file (fed by the outbox); the
:class:`~.reentry.Reentry` what signal handlers left; :class:`SyncEngine`
itself the lifecycle (started, closing, the settings value). The hot path
(:meth:`SyncEngine.update`) takes the outbox lock once.
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
from typing import Optional, Union

from .._config import RemoteConfig, load_config
from .._exceptions import ConfigError, LightdSyncError
from .._forksafe import after_fork_in_child
from .._logutil import get_logger, safe_log
from .._model import (
    _STATUS_BY_VALUE,
    MAX_MESSAGE_LENGTH,
    MAX_SERVER_ID_LENGTH,
    BillingEvent,
    HealthState,
    LatencyHistogram,
    Lifecycle,
    Status,
    SyncStats,
    check_server_id,
    error_value_problem,
    parse_lifecycle,
    parse_status,
)
from .._transports.base import Transport
from .._transports.registry import make_transport
from . import exit_hook
from .health import HealthMonitor, HealthTracker
from .item import Item
from .outbox import BILLING_FULL, DROPPED, Outbox
from .pool import OutcomeHook, Pool, Reporter
from .reentry import MAIN, Reentry
from .reload import TRANSPORT_KEYS, ReloadResult, SighupReload
from .settings import Settings, budget, make_settings
from .slot import TransportSlot, close_quietly
from .state import StateStore

__all__ = ["DEFAULT_WAIT", "SyncEngine"]

log = get_logger("engine")

#: What ``timeout=None`` means for :meth:`SyncEngine.close` and :meth:`SyncEngine.flush`.
DEFAULT_WAIT = 5.0


class SyncEngine:
    """
    Deliver status updates to the remote from a bounded pool of background threads.

    ``update``/``error``/``lifecycle``/``billing`` return at once: ``True`` if
    queued, ``False`` if dropped (queue full, or engine closed). Updates of one
    server are delivered in order and never two at once; up to
    ``config.workers`` requests for other servers are in flight at once.
    Nothing about the network ever raises into the caller; every update is
    counted in :meth:`stats`.

    Failed deliveries are retried ``config.retries`` times when that can help;
    with ``config.resync`` the latest update of every server that the remote
    missed is re-sent once it answers again (at most once per server per
    ``health_interval``).

    Threads (named ``lightd-sync-…``, daemon) start on the first call that
    needs them. :meth:`close` (or leaving a ``with`` block) delivers what it
    can until its deadline and leaves no thread behind; at interpreter exit
    open engines get ``config.shutdown_timeout`` seconds. A forked child starts
    afresh (empty queues and counters) and never touches the parent's threads.

    Args:
        config: The validated remote config.
        transport: Use this transport instead of the one *config* selects
            (for tests, or a transport built by hand); it is kept on reload.
        on_outcome: Called with an :class:`~lightd_sync.Outcome` once for
            every update when it is settled: from a worker thread for
            delivered, failed and superseded updates, from the calling thread
            for dropped ones; never while a library lock is held. What it
            raises is logged (throttled) and never stops delivery.

    Raises:
        ConfigError: *config* names a transport that does not exist.

    .. versionadded:: 0.2.0 *on_outcome*.
    """

    def __init__(
        self,
        config: RemoteConfig,
        *,
        transport: Optional[Transport] = None,
        on_outcome: Optional[OutcomeHook] = None,
    ) -> None:
        if not isinstance(config, RemoteConfig):
            raise TypeError(f"config must be a RemoteConfig, not {type(config).__name__}")
        if on_outcome is not None and not callable(on_outcome):
            raise TypeError(f"on_outcome must be callable, not {type(on_outcome).__name__}")
        self._own_transport = transport is None
        self._on_outcome = on_outcome
        self._source: Optional[str] = None
        self._settings = make_settings(config)
        self._build(transport if transport is not None else make_transport(config))
        self._store: Optional[StateStore] = None
        if config.enabled and config.state_path is not None:
            try:
                self._open_store(config.state_path)
            except BaseException:
                self._slot.close_all()  # nothing else will close what we built
                raise
        after_fork_in_child(self._after_fork_in_child)  # the one fork hook (held weakly)

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
            item = Item(row.server, row.status, row.data, row.error, row.event_id)
            self._outbox.seed(item)
        if rows:
            safe_log(
                log,
                logging.INFO,
                "remote.state_path: %d servers' latest updates were never acknowledged; "
                "they are re-sent once the remote is healthy",
                len(rows),
            )

    @classmethod
    def from_file(
        cls,
        path: Union[str, os.PathLike[str]],
        *,
        transport: Optional[Transport] = None,
        on_outcome: Optional[OutcomeHook] = None,
    ) -> SyncEngine:
        """
        Build an engine from a Lightd ``config.json`` (environment overrides apply).

        :meth:`reload` without arguments re-reads the same file.

        Raises:
            ConfigError: The file cannot be read or is invalid.
        """
        engine = cls(load_config(path), transport=transport, on_outcome=on_outcome)
        engine._source = os.fspath(path)
        return engine

    def __repr__(self) -> str:
        running = self._pid == os.getpid()
        state = "closed" if self._closing else ("running" if running else "idle")
        return (
            f"<SyncEngine {state} transport={self._slot.current!r} "
            f"workers={self.config.workers} pending={self._outbox.stats_unlocked().pending}>"
        )

    @property
    def config(self) -> RemoteConfig:
        """The config the engine runs on."""
        return self._settings.config

    @property
    def source(self) -> Optional[str]:
        """
        The ``config.json`` the engine was built from (:meth:`from_file`), or ``None``.

        .. versionadded:: 0.2.0
        """
        return self._source

    @property
    def closed(self) -> bool:
        """
        Whether :meth:`close` was called: updates are dropped from then on.

        .. versionadded:: 0.2.0
        """
        return self._closing or self._reentry.close_wanted is not None

    @property
    def transport(self) -> Transport:
        """The transport updates are sent through now."""
        return self._slot.current

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
        return self._submit(Item(server, st))

    def error(self, server: str, message: Optional[str] = None, *, error: str = "failed") -> bool:
        """
        Queue an error update of *server*: ``"error": error``, with *message* as ``data``.

        A *message* of ``None`` leaves ``data`` out of the body. A *message*
        longer than 8,192 characters is cut to its first 8,192 (never refused).
        Returns and raises as :meth:`update`; *message* must be a string or
        ``None``, *error* a non-empty string of at most 8,192 characters
        (``"failed"``, ``"timeout"`` or a message of your own).

        .. versionchanged:: 0.2.0 Long messages are cut to 8,192 characters;
           *message* may be ``None``; the *error* argument.
        """
        check_server_id(server)
        if message is not None:
            if not isinstance(message, str):
                raise TypeError(f"message must be a str or None, not {type(message).__name__}")
            if len(message) > MAX_MESSAGE_LENGTH:
                message = message[:MAX_MESSAGE_LENGTH]
        problem = error_value_problem(error)
        if problem is not None:
            raise (TypeError if type(error) is not str else ValueError)(problem)
        return self._submit(Item(server, Status.FAILED, message, error))

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

    def billing(
        self,
        server: str,
        *,
        memory_gb: float,
        cpu_vcpus: float,
        storage_gb: float,
        egress_gb: float,
        duration_hours: float,
        estimated_cost: float,
        timestamp: Optional[int] = None,
    ) -> bool:
        """
        Queue one billing event of *server* (its resource use, as Lightd reports it).

        Billing events have their own bound (``queue_size`` of them pending),
        never supersede nor delay status updates, and each one is delivered:
        they are measurements, not states, so none is resynced or written to
        the state file. They are counted in :meth:`stats` with the updates; one
        dropped because its own queue is full has the reason ``billing_queue_full``.

        Args:
            timestamp: Seconds since the epoch; ``None`` means now.

        Returns:
            ``True`` if queued, ``False`` if dropped.

        Raises:
            TypeError, ValueError: A field is missing its type or range; the
                message names the field.

        .. versionadded:: 0.2.0
        """
        event = BillingEvent(
            server,
            memory_gb=memory_gb,
            cpu_vcpus=cpu_vcpus,
            storage_gb=storage_gb,
            egress_gb=egress_gb,
            duration_hours=duration_hours,
            estimated_cost=estimated_cost,
            timestamp=int(time.time()) if timestamp is None else timestamp,
        )
        return self._submit(Item(server, Status.READY, billing=event))

    def _submit(self, item: Item) -> bool:
        if get_ident() != MAIN.ident:  # no signal handler runs in this thread
            if self._pid != os.getpid():
                self._start()
            return self._admit(item)
        reentry = self._reentry
        if reentry.inside:  # a handler that interrupted the engine: no lock, O(1)
            reentry.deferred.append(item)
            return True
        if self._pid != os.getpid():
            self._start()
        reentry.inside = True
        try:
            if item.billing is None:
                dropped = self._outbox.admit(item)
            else:
                dropped = self._outbox.admit_billing(item)
        finally:
            reentry.inside = False
        if reentry.wanted:
            self._hand_on()
        return True if dropped is None else self._dropped(item, dropped)

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
        self._reporter.notify(item, DROPPED, reason)
        return False

    def _admit_deferred(self) -> None:
        """A worker (or close) admits what signal handlers deferred."""
        deferred = self._reentry.deferred
        while deferred:
            try:
                item = deferred.popleft()
            except IndexError:  # another worker took the last one
                return
            self._admit(item)

    # -- sections a signal handler may interrupt -----------------------------

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
            threading.Thread(target=self._close, args=(close_budget,), name=name, daemon=True).start()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> SyncEngine:
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

    def __enter__(self) -> SyncEngine:
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
            if self._closed.wait(max(0.0, deadline - time.monotonic())):
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
        ended = self._pool.join(deadline - min(0.1, seconds / 10))
        with self._section():
            self._slot.close_all()  # cuts off what is still in flight
        ended = self._pool.join(deadline)
        if monitor is not None:
            ended = monitor.join(deadline) and ended
        if sighup is not None:
            ended = sighup.stop(deadline) and ended
        with self._section():
            left, drops, fails = self._outbox.finish()
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

    # -- reload ------------------------------------------------------------------

    def reload(self, config: Optional[RemoteConfig] = None) -> ReloadResult:
        """
        Apply a new config to the running engine; nothing queued is lost.

        With no argument, re-read the file the engine was built from
        (:meth:`from_file`). The new config is validated first: if it is
        invalid nothing changes. Otherwise a new transport is built when a key
        that shapes it changed; updates in flight finish on the old one (closed
        once idle), queued and new ones go through the new one. ``workers``,
        ``queue_size``, ``health_interval`` and the delivery policy change too;
        per-server order holds across the change.

        Raises:
            ConfigError: The new config is invalid, or there is no file to re-read.
            LightdSyncError: The engine is closed, or this is a signal handler
                that interrupted the engine (use :meth:`install_sighup_reload`).

        .. versionadded:: 0.1.0
        """
        if self._reentry.interrupted():
            raise LightdSyncError(
                "reload: called from a signal handler that interrupted the engine; "
                "use install_sighup_reload(), which reloads from a thread"
            )
        with self._reload_lock:
            if config is None:
                if self._source is None:
                    raise ConfigError(
                        "reload: this engine was not built from a file; pass a RemoteConfig"
                    )
                config = load_config(self._source)
            elif not isinstance(config, RemoteConfig):
                raise TypeError(f"config must be a RemoteConfig, not {type(config).__name__}")
            result = ReloadResult.between(self.config, config)
            if not result.changed:
                return result
            changed = set(result.changed)
            if "state_path" in changed and self._store is not None:
                raise ConfigError(
                    "remote.state_path: cannot change on a running engine (the file holds "
                    "what the remote has not acknowledged); restart the daemon to move it"
                )
            rebuild = self._own_transport and bool(TRANSPORT_KEYS & changed)
            transport = make_transport(config) if rebuild else None
            try:
                old = self._apply(make_settings(config), transport, changed)
            except LightdSyncError:
                if transport is not None:
                    close_quietly(transport)  # built for nothing; nothing else waits on it
                raise
            if old is not None:
                close_quietly(old)
        safe_log(
            log, logging.INFO, "reloaded the remote config; changed: %s", ", ".join(result.changed)
        )
        return result

    def _apply(
        self, settings: Settings, transport: Optional[Transport], changed: set[str]
    ) -> Optional[Transport]:
        """Swap in the new settings value; return a transport to close (no lock held then)."""
        config = settings.config
        with self._section(), self._lifecycle:
            if self._closing:
                raise LightdSyncError("reload: the engine is closed")
            self._settings = settings
            self._outbox.resize(config.queue_size, config.max_servers, config.resync)
            if self._store is not None:
                self._store.max_servers = config.max_servers
            self._pool.policy = settings.policy
            self._pool.secret = self._health.secret = config.token
            old = self._slot.swap(transport) if transport is not None else None
            if self._pid == os.getpid():
                self._pool.resize(config.workers)
            monitor = self._monitor
        if monitor is not None:
            monitor.interval = config.health_interval
            if {"url", "token", "transport", "enabled"} & changed:
                self._health.reset()
            monitor.poke(0.0)
        return old

    def install_sighup_reload(self) -> None:
        """
        Reload from the file on ``SIGHUP`` (POSIX), the usual daemon convention.

        The signal handler only wakes a ``lightd-sync-reload`` thread, which
        reloads: a reload inside the handler could interrupt this engine's
        own ``update()`` in the same thread. The handler it replaces (if any)
        is still called, after the reload is scheduled. Errors are logged,
        never raised. Call it from the main thread; :meth:`close` ends the
        thread and, called from the main thread, restores the old handler
        (from another thread Python cannot: then ours stays, and only calls
        the old one).

        .. versionadded:: 0.1.0
        .. versionchanged:: 0.2.0 The replaced handler is called and restored.
        """
        with self._section(), self._lifecycle:
            if self._closing or self._sighup is not None:
                return
            self._sighup = sighup = SighupReload(self.reload)
        sighup.install()

    # -- health and resync ---------------------------------------------------

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

    # -- waiting and observing -----------------------------------------------

    def flush(self, timeout: Optional[float] = None) -> bool:
        """
        Wait until nothing is pending.

        From a signal handler that interrupted the engine it does not wait: it
        says whether nothing is pending now.

        Args:
            timeout: Seconds to wait at most (any non-negative number,
                however large, ``math.inf`` included); ``None`` means 5 seconds.

        Returns:
            ``True`` if everything was delivered or given up on in time.
        """
        reentry = self._reentry
        if reentry.interrupted():
            return not reentry.deferred and not self._outbox.stats_unlocked().pending
        end = time.monotonic() + budget(timeout, DEFAULT_WAIT)
        while True:
            with self._section():
                if reentry.deferred and self._pid == os.getpid():
                    self._outbox.wake()
                idle = self._outbox.idle_event()
            if idle is None and not reentry.deferred:
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            if idle is None:  # only what handlers deferred: a worker admits it shortly
                time.sleep(min(left, 0.005))
            else:
                idle.wait(min(left, threading.TIMEOUT_MAX))

    def stats(self) -> SyncStats:
        """
        Return a consistent snapshot of the counters (it always balances).

        From a signal handler that interrupted the engine it reads them without
        the lock; the snapshot still balances (``pending`` is what is not settled).
        """
        if self._reentry.interrupted():
            return self._outbox.stats_unlocked()
        with self._section():
            return self._outbox.stats()

    def outcome_reasons(self) -> dict[tuple[str, str], int]:
        """
        Return how many updates failed, were dropped or superseded, by ``(result, reason)``.

        The counts of one result sum to its counter in :meth:`stats`, e.g.
        ``{("failed", "timeout"): 3, ("dropped", "queue_full"): 1}``.

        Raises:
            LightdSyncError: Called from a signal handler that interrupted the engine.

        .. versionadded:: 0.2.0
        """
        self._refuse_in_handler("outcome_reasons")
        with self._section():
            return self._outbox.reasons()

    def latency_histogram(self) -> LatencyHistogram:
        """
        Return how long successful deliveries took, as a histogram.

        Raises:
            LightdSyncError: Called from a signal handler that interrupted the engine.

        .. versionadded:: 0.1.0
        """
        self._refuse_in_handler("latency_histogram")
        with self._section():
            return self._outbox.latency()

    def _refuse_in_handler(self, name: str) -> None:
        if self._reentry.interrupted():
            raise LightdSyncError(
                f"{name}: called from a signal handler that interrupted the engine; "
                "call it outside the handler (stats() works there)"
            )

    @property
    def health(self) -> HealthState:
        """What the last health check found (``healthy`` is None before the first)."""
        return self._health.state

    def check_health(self) -> HealthState:
        """Check the remote's health now, in the calling thread, and return the new state."""
        self._refuse_in_handler("check_health")
        return self._health.check()
