"""
The sync engine: the facade that owns the public API and the lifecycle.

Each piece of state has one owner (see ``docs/engine.md``):

- :class:`~lightd_sync._ledger.Ledger`: admission into the lanes, the queue
  bound, every counter, the latency histogram, the log throttles;
- :class:`~lightd_sync._book.ResyncBook`: each server's latest update and the
  ones the remote missed;
- :class:`~lightd_sync._slot.TransportSlot`: the transport in use and the ones
  a reload replaced;
- :class:`~lightd_sync._lanes.Lanes`: the delivery threads of one generation,
  which of them takes the next batch, the servers with an update in flight;
- :class:`~lightd_sync._delivery.Deliverer`: what a lane does with an update,
  asking the :class:`~lightd_sync._policy.DeliveryPolicy` (a frozen value)
  what follows each failure, and the remote's ``Retry-After`` pause;
- :class:`~lightd_sync._health.HealthMonitor`: the health timer thread;
- :class:`~lightd_sync._state.StateStore` (with ``remote.state_path``): the
  file that keeps each server's latest update across a restart;
- :class:`~lightd_sync._reentry.Reentry`: whether a signal handler
  interrupted a call into the engine, and what it submitted meanwhile;
- :mod:`~lightd_sync._atexit`: the engines to close at interpreter exit.

:class:`SyncEngine` wires them, starts and stops their threads, and swaps
them on :meth:`~SyncEngine.reload`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from threading import get_ident
from types import TracebackType
from typing import Optional, Union

from . import _atexit
from ._book import ResyncBook
from ._config import RemoteConfig, load_config
from ._delivery import Deliverer, OutcomeHook
from ._exceptions import ConfigError, LightdSyncError
from ._forksafe import after_fork_in_child
from ._health import HealthMonitor, HealthTracker
from ._lanes import Lanes
from ._ledger import DROPPED, Ledger
from ._logutil import get_logger, safe_log
from ._model import (
    _STATUS_BY_VALUE,
    MAX_MESSAGE_LENGTH,
    MAX_SERVER_ID_LENGTH,
    HealthState,
    LatencyHistogram,
    Lifecycle,
    Status,
    SyncStats,
    check_server_id,
    parse_lifecycle,
    parse_status,
)
from ._pending import Pending
from ._policy import DeliveryPolicy, bounded
from ._reentry import MAIN, Reentry
from ._reload import TRANSPORT_KEYS, ReloadResult, SighupReload
from ._slot import TransportSlot, close_quietly
from ._state import StateStore
from ._transports.base import Transport
from ._transports.registry import make_transport

__all__ = ["DEFAULT_WAIT", "SyncEngine"]

log = get_logger("engine")

#: What ``timeout=None`` means for :meth:`SyncEngine.close` and :meth:`SyncEngine.flush`.
DEFAULT_WAIT = 5.0


def _budget(timeout: Optional[float]) -> float:
    """Seconds to wait for a ``timeout`` argument: any non-negative number, inf included."""
    if timeout is None:
        return DEFAULT_WAIT
    seconds = float(timeout)
    return seconds if seconds > 0 else 0.0  # negative and nan mean "do not wait"


class SyncEngine:
    """
    Deliver status updates to the remote from a bounded pool of background threads.

    ``update``/``error``/``lifecycle`` return at once: ``True`` if queued,
    ``False`` if dropped (queue full, or engine closed). Updates of one server
    are delivered in order and never two at once; up to ``config.workers``
    batches of updates of other servers are in flight at once. Nothing about the network ever
    raises into the caller; every update is counted in :meth:`stats`.

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
            every update when it is settled: from a lane thread for
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
        self._config = config
        self._build(config, transport if transport is not None else make_transport(config))
        # One reload at a time (it builds a transport: I/O, so not under _lifecycle).
        self._reload_lock = threading.Lock()
        self._store: Optional[StateStore] = None
        if config.enabled and config.state_path is not None:
            try:
                self._open_store(config.state_path)
            except BaseException:
                self._slot.close_all()  # nothing else will close what we built
                raise
        after_fork_in_child(self._after_fork_in_child)

    def _open_store(self, path: str) -> None:
        """
        Open the state file: take its lock, and remember what the remote never acknowledged.

        Those updates are re-sent once the remote is healthy, with their stored
        event ids. A bad file is logged by the store, which then runs on memory.

        Raises:
            ConfigError: Another process (or engine) holds the file.
        """
        store = StateStore(path, max_servers=self._config.max_servers)
        rows = store.open()
        if not store.active:  # a bad file: logged by the store; run on memory only
            return
        self._store = store
        self._ledger.store = store
        self._deliverer.store = store
        _atexit.close_at_exit(self)  # its writer thread runs: the exit hook must close it
        for row in rows:
            item = Pending(row.server, row.status, row.data, row.event_id)
            self._ledger.seed(item)
            self._book.missed(item)
        if rows:
            safe_log(
                log,
                logging.INFO,
                "remote.state_path: %d servers' latest updates were never acknowledged; "
                "they are re-sent once the remote is healthy",
                len(rows),
            )

    def _build(self, config: RemoteConfig, transport: Transport) -> None:
        """Make the collaborators and the lifecycle state (in __init__ and in a forked child)."""
        self._ledger = Ledger(config.queue_size, config.max_servers)
        self._book = ResyncBook(self._ledger, config.max_servers, resync=config.resync)
        self._slot = TransportSlot(transport)
        self._deliverer = Deliverer(
            self._ledger,
            self._book,
            self._slot,
            DeliveryPolicy.from_config(config),
            on_missed=self._probe,
            on_outcome=self._on_outcome,
            after_batch=self._after_batch,
        )
        self._health = HealthTracker(self._check_transport, on_healthy=self._resync)
        self._deliverer.secret = self._health.secret = config.token
        # Guards the lifecycle: _pid, _closing, _lanes, _old_lanes, _gates,
        # _monitor and _sighup. Reentrant: close() may run in a signal handler
        # that interrupted start() or close() in the same thread.
        self._lifecycle = threading.RLock()
        self._pid: Optional[int] = None  # the process whose threads run; None: not started
        self._closing = False  # close() began: nothing starts any more
        self._closed = threading.Event()  # close() finished
        self._lanes: Optional[Lanes] = None
        self._old_lanes: list[Lanes] = []  # replaced by a reload, until they end
        self._gates: list[threading.Event] = []  # new lanes wait on them after a reload
        self._generation = 0
        self._monitor: Optional[HealthMonitor] = None
        self._sighup: Optional[SighupReload] = None
        # Signal handlers that interrupt a call into the engine in the main thread.
        self._reentry = Reentry(self._admit)

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's threads, locks, queues and counters."""
        closing = self._closing
        self._build(self._config, self._slot.current)
        self._reload_lock = threading.Lock()
        self._store = None  # the file is the parent's: a child never writes it
        if closing:
            self._closing = True
            self._ledger.close()
            self._closed.set()
        _atexit.forget(self)

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
            f"workers={self._config.workers} pending={self._ledger.stats().pending}>"
        )

    @property
    def config(self) -> RemoteConfig:
        """The config the engine runs on."""
        return self._config

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
        return self._closing

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
        return self._submit(server, st, None)

    def error(self, server: str, message: str) -> bool:
        """
        Queue an error update of *server* (``"error": "failed"`` with *message* as ``data``).

        A *message* longer than 8,192 characters is cut to its first 8,192
        (never refused). Returns and raises as :meth:`update`; *message* must
        be a string.

        .. versionchanged:: 0.2.0 Long messages are cut to 8,192 characters.
        """
        check_server_id(server)
        if not isinstance(message, str):
            raise TypeError(f"message must be a str, not {type(message).__name__}")
        if len(message) > MAX_MESSAGE_LENGTH:
            message = message[:MAX_MESSAGE_LENGTH]
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
        item = Pending(server, status, data)
        if get_ident() != MAIN.ident:
            if self._pid != os.getpid():
                self._start()
            dropped = self._ledger.admit(item)
            return True if dropped is None else self._dropped(item, dropped)
        reentry = self._reentry  # (inlined here: this is the hot path)
        if reentry.inside:  # a signal handler interrupted this engine: that call admits it
            reentry.defer(item)
            return True
        reentry.inside = True
        try:
            if self._pid != os.getpid():
                self._start()
            dropped = self._ledger.admit(item)
            return True if dropped is None else self._dropped(item, dropped)
        finally:
            if reentry.deferred:  # what a signal handler queued meanwhile, the flag still up
                reentry.admit_deferred()
            reentry.inside = False

    def _admit(self, item: Pending) -> bool:
        dropped = self._ledger.admit(item)
        return True if dropped is None else self._dropped(item, dropped)

    def _dropped(self, item: Pending, dropped: tuple[str, int]) -> bool:
        """Count, remember and log *item*, which the ledger did not queue; return False."""
        reason, due = dropped
        if reason == "queue_full":
            self._book.missed(item)  # re-sent once the queue has room and the remote is healthy
        if due:
            why = (
                "the engine is closed"
                if reason == "closed"
                else f"the queue is full ({self._ledger.queue_size})"
            )
            safe_log(
                log,
                logging.WARNING,
                "dropped %d update(s): %s (drops are summed up at most once per %g s)",
                due,
                why,
                self._ledger.drop_window(),
            )
        self._deliverer.notify(item, DROPPED, reason)
        return False

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> SyncEngine:
        """Start the delivery threads and the health timer (idempotent; also done lazily)."""
        if self._pid != os.getpid():
            self._reentry.guarded(self._start)  # (nested in a handler: _start is reentrant)
        return self

    def _start(self) -> None:
        with self._lifecycle:
            if self._pid is not None and self._pid != os.getpid():
                self._after_fork_in_child()  # a pre-forking server whose fork hook did not run
            if self._pid == os.getpid() or self._closing:
                return
            config = self._config
            lanes = Lanes(config.workers, self._deliverer.deliver_batch)
            monitor = HealthMonitor(self._health, config.health_interval)
            # Routed and marked started before any thread starts: a call that a
            # signal handler makes meanwhile queues its update and returns.
            self._ledger.reroute(lanes)
            self._lanes, self._monitor = lanes, monitor
            self._pid = os.getpid()
            try:
                if sys.is_finalizing():
                    raise RuntimeError("the interpreter is shutting down")
                lanes.start()
                monitor.start()
            except RuntimeError as exc:  # "can't create new thread at interpreter shutdown"
                self._closing = True
                self._ledger.close()
                monitor.stop()
                self._ledger.finish()  # what was queued meanwhile fails (closed)
                self._closed.set()
                safe_log(log, logging.WARNING, "not started: %s; updates are dropped", exc)
                return
        _atexit.close_at_exit(self)

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
        self._ledger.close()
        return self._config.shutdown_timeout

    def close(self, timeout: Optional[float] = None) -> None:
        """
        Deliver what is queued until *timeout* seconds have passed, then stop.

        Returns by the deadline even when the remote never answers: requests
        still in flight are cut off and what is left is counted as failed
        (reason ``closed``). No ``lightd-sync`` thread remains, except one
        blocked in a DNS lookup, which cannot be interrupted and ends by itself
        within ``timeout``. Idempotent, safe from any thread, concurrently
        with any other call, and from a signal handler; later updates are
        dropped.

        Args:
            timeout: Seconds to wait at most (any non-negative number,
                ``math.inf`` included); ``None`` means 5 seconds.
        """
        budget = _budget(timeout)
        if self._reentry.interrupted():  # in a signal handler that interrupted this engine
            self._close_from_handler(budget)
        else:
            self._reentry.guarded(lambda: self._close(budget))

    def _close_from_handler(self, budget: float) -> None:
        """
        close() in a signal handler that interrupted the engine: close from a thread, return.

        The interrupted call holds the engine's locks below the handler on
        this very stack, so nothing can finish here; a ``lightd-sync-close``
        thread closes the engine (by *budget*) as soon as that call returns.
        """
        with self._lifecycle:
            self._ledger.close()  # safe: it only sets a flag and queues the lanes' stop
        closer = threading.Thread(
            target=self._close, args=(budget,), name="lightd-sync-close", daemon=True
        )
        closer.start()

    def _close(self, budget: float) -> None:
        deadline = time.monotonic() + budget
        with self._lifecycle:
            if self._closing:
                first = False
            else:
                first = self._closing = True
                lanes = [*self._old_lanes, *([self._lanes] if self._lanes else [])]
                monitor, sighup = self._monitor, self._sighup
                self._ledger.close()  # stops the current lanes after what is queued
        if not first:  # another call is closing: wait for it, within our own deadline
            self._closed.wait(bounded(deadline - time.monotonic()))
            return
        try:
            self._finish_close(lanes, monitor, sighup, deadline, budget)
        finally:
            self._closed.set()
            _atexit.forget(self)

    def _finish_close(
        self,
        lanes: list[Lanes],
        monitor: Optional[HealthMonitor],
        sighup: Optional[SighupReload],
        deadline: float,
        budget: float,
    ) -> None:
        if monitor is not None:
            monitor.stop()
        # Leave a little of the budget to cut off requests that never end.
        soft = deadline - min(0.1, budget / 10)
        if not all(lane.join(soft) for lane in lanes):
            self._deliverer.abort.set()
            for gate in self._gates:  # the lanes behind a gate fail what they hold, at once
                gate.set()
        self._slot.close_all()
        ended = all(lane.join(deadline) for lane in lanes)
        if monitor is not None:
            ended = monitor.join(deadline) and ended
        if sighup is not None:
            ended = sighup.stop(deadline) and ended
        self._reentry.admit_deferred()  # dropped now (closed), and counted
        left, drops, fails = self._ledger.finish()
        store = self._store
        if store is not None:  # what was accepted and acknowledged, written before we return
            store.close(deadline - time.monotonic())
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
            LightdSyncError: The engine is closed.

        .. versionadded:: 0.1.0
        """
        if self._reentry.interrupted():
            raise LightdSyncError(
                "reload: called from a signal handler that interrupted the engine; "
                "use install_sighup_reload(), which reloads from a thread"
            )
        return self._reentry.guarded(lambda: self._reload(config))

    def _reload(self, config: Optional[RemoteConfig]) -> ReloadResult:
        with self._reload_lock:
            if config is None:
                if self._source is None:
                    raise ConfigError(
                        "reload: this engine was not built from a file; pass a RemoteConfig"
                    )
                config = load_config(self._source)
            elif not isinstance(config, RemoteConfig):
                raise TypeError(f"config must be a RemoteConfig, not {type(config).__name__}")
            result = ReloadResult.between(self._config, config)
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
            old = self._apply(config, transport, result)
            if old is not None:
                close_quietly(old)
        safe_log(
            log, logging.INFO, "reloaded the remote config; changed: %s", ", ".join(result.changed)
        )
        return result

    def _apply(
        self, config: RemoteConfig, transport: Optional[Transport], result: ReloadResult
    ) -> Optional[Transport]:
        """Swap in what *config* changes; return a transport to close (no lock held then)."""
        changed = set(result.changed)
        with self._lifecycle:
            if self._closing:
                if transport is not None:
                    close_quietly(transport)  # built for nothing; nothing else waits on it
                raise LightdSyncError("reload: the engine is closed")
            self._config = config
            self._ledger.resize(config.queue_size, config.max_servers)
            self._book.max_servers = config.max_servers
            if self._store is not None:
                self._store.max_servers = config.max_servers
            self._book.resync = config.resync
            self._deliverer.policy = DeliveryPolicy.from_config(config)
            self._deliverer.secret = self._health.secret = config.token
            old = self._slot.swap(transport) if transport is not None else None
            if "workers" in changed and self._lanes is not None:
                self._replace_lanes(config.workers)
            monitor = self._monitor
        if monitor is not None:
            monitor.interval = config.health_interval
            if {"url", "token", "transport", "enabled"} & changed:
                self._health.reset()
            monitor.poke(0.0)
        return old

    def _replace_lanes(self, count: int) -> None:
        """Route to *count* new lanes that wait until the old ones drained. Under _lifecycle."""
        old = self._lanes
        assert old is not None
        gate = threading.Event()
        old.on_drained = gate.set
        self._generation += 1
        lanes = Lanes(
            count, self._deliverer.deliver_batch, name_suffix=f"-g{self._generation}", gate=gate
        )
        lanes.start()
        self._ledger.reroute(lanes)  # stops the old lanes after what they hold
        self._old_lanes = [lane for lane in self._old_lanes if lane.alive]
        self._old_lanes.append(old)
        self._gates = [g for g in self._gates if not g.is_set()]
        self._gates.append(gate)
        self._lanes = lanes

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
        with self._lifecycle:
            if self._closing or self._sighup is not None:
                return
            self._sighup = sighup = SighupReload(self.reload)
        sighup.install()

    # -- health and resync ---------------------------------------------------

    def _check_transport(self) -> None:
        transport = self._slot.acquire()
        try:
            transport.check_health()  # a failed check raises: HealthTracker records it
        finally:
            self._slot.release(transport)

    def _after_batch(self) -> None:
        self._reentry.drain()  # a lane admits what a signal handler queued, if still there

    def _probe(self) -> None:
        monitor = self._monitor
        if monitor is not None:
            monitor.probe()

    def _resync(self) -> None:
        """
        After every healthy check: re-send what the remote missed and is due.

        Only as many as the queue has room for; the rest wait for the next
        healthy check, so a resync never drops anything itself.
        """
        if not self._book.missed_count or self._ledger.closed:
            return
        due = self._book.due(self._deliverer.policy.resync_interval)
        if not due:
            return
        left = self._ledger.admit_resync(due)
        if left:
            self._book.give_back(left)
        sent = len(due) - len(left)
        if sent:
            safe_log(
                log,
                logging.INFO,
                "re-sending the latest status of %d servers the remote missed (%d more wait)",
                sent,
                self._book.missed_count,
            )

    # -- waiting and observing -----------------------------------------------

    def flush(self, timeout: Optional[float] = None) -> bool:
        """
        Wait until nothing is pending.

        Args:
            timeout: Seconds to wait at most (any non-negative number,
                ``math.inf`` included); ``None`` means 5 seconds.

        Returns:
            ``True`` if everything was delivered or given up on in time.
        """
        self._reentry.drain()
        return self._ledger.wait_idle(time.monotonic() + _budget(timeout))

    def stats(self) -> SyncStats:
        """Return a consistent snapshot of the counters."""
        self._reentry.drain()
        return self._ledger.stats()

    def outcome_reasons(self) -> dict[tuple[str, str], int]:
        """
        Return how many updates failed, were dropped or superseded, by ``(result, reason)``.

        The counts of one result sum to its counter in :meth:`stats`, e.g.
        ``{("failed", "timeout"): 3, ("dropped", "queue_full"): 1}``.

        .. versionadded:: 0.2.0
        """
        return self._ledger.reasons()

    def latency_histogram(self) -> LatencyHistogram:
        """
        Return how long successful deliveries took, as a histogram.

        .. versionadded:: 0.1.0
        """
        return self._ledger.latency()

    @property
    def health(self) -> HealthState:
        """What the last health check found (``healthy`` is None before the first)."""
        return self._health.state

    def check_health(self) -> HealthState:
        """Check the remote's health now, in the calling thread, and return the new state."""
        return self._health.check()
