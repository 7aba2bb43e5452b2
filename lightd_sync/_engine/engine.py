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

import os
import threading
import time
from threading import get_ident
from typing import Optional, Union

from .._config import RemoteConfig, load_config
from .._forksafe import after_fork_in_child
from .._logutil import get_logger
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
from .item import Item
from .pool import OutcomeHook
from .reentry import MAIN
from .reloading import Reloading
from .runtime import DEFAULT_WAIT
from .settings import budget, make_settings
from .state import StateStore

__all__ = ["DEFAULT_WAIT", "SyncEngine"]

log = get_logger("engine")


class SyncEngine(Reloading):
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

    @property
    def health(self) -> HealthState:
        """What the last health check found (``healthy`` is None before the first)."""
        return self._health.state

    def check_health(self) -> HealthState:
        """Check the remote's health now, in the calling thread, and return the new state."""
        self._refuse_in_handler("check_health")
        return self._health.check()
