"""
The sync engine's facade: :class:`SyncEngine` owns the public API and delegates.

Its :class:`~.runtime.Runtime` owns the collaborators of one process and the
lifecycle; each collaborator owns its own state (see ``docs/engine.md``). The
hot path (:meth:`SyncEngine.update`) takes the outbox lock once.
"""

from __future__ import annotations

import os
import time
from typing import Optional, TypeVar, Union

from .._config import RemoteConfig, load_config
from .._model import (
    _STATUS_BY_VALUE,
    MAX_SERVER_ID_LENGTH,
    BillingEvent,
    HealthState,
    LatencyHistogram,
    Lifecycle,
    Status,
    SyncStats,
    check_server_id,
    parse_lifecycle,
    parse_status,
)
from .._transports.base import Transport
from .._transports.registry import make_transport
from . import reloading
from .item import Item, error_item
from .outbox import Outbox
from .pool import OutcomeHook
from .reload import ReloadResult
from .runtime import DEFAULT_WAIT, Runtime
from .settings import budget, make_settings

__all__ = ["DEFAULT_WAIT", "SyncEngine"]

_E = TypeVar("_E", bound="SyncEngine")


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
        self._own_transport = transport is None  # a reload may build another one
        self._source: Optional[str] = None  # set once by from_file(), before any use
        own = transport if transport is not None else make_transport(config)
        self._runtime = runtime = Runtime(make_settings(config), own, on_outcome)
        self._submit = runtime.submit  # bound once: update()'s hot path (the runtime is kept)
        if config.enabled and config.state_path is not None:
            try:
                runtime.open_store(config.state_path)
            except BaseException:
                runtime.slot.close_all()  # nothing else will close what we built
                raise

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
        rt = self._runtime
        state = "closed" if rt.closing else ("running" if rt.pid == os.getpid() else "idle")
        return (
            f"<SyncEngine {state} transport={rt.slot.current!r} "
            f"workers={self.config.workers} pending={rt.outbox.stats_unlocked().pending}>"
        )

    @property
    def config(self) -> RemoteConfig:
        """The config the engine runs on."""
        return self._runtime.settings.config

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
        rt = self._runtime
        return rt.closing or rt.reentry.close_wanted is not None

    @property
    def transport(self) -> Transport:
        """The transport updates are sent through now."""
        return self._runtime.slot.current

    def start(self: _E) -> _E:
        """Start the delivery threads and the health timer (idempotent; also done lazily)."""
        rt = self._runtime
        if rt.pid != os.getpid() and not rt.reentry.interrupted():
            rt.start()
        return self

    def __enter__(self: _E) -> _E:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
        self._runtime.request_close(budget(timeout, DEFAULT_WAIT))

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
        return self._submit(error_item(server, message, error))

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
        return self._runtime.wait_idle(budget(timeout, DEFAULT_WAIT))

    def stats(self) -> SyncStats:
        """
        Return a consistent snapshot of the counters (it always balances).

        From a signal handler that interrupted the engine it reads them without
        the lock; the snapshot still balances (``pending`` is what is not settled).
        """
        rt = self._runtime
        if rt.reentry.interrupted():
            return rt.outbox.stats_unlocked()
        with rt.reentry.section():
            return rt.outbox.stats()

    def outcome_reasons(self) -> dict[tuple[str, str], int]:
        """
        Return how many updates failed, were dropped or superseded, by ``(result, reason)``.

        The counts of one result sum to its counter in :meth:`stats`, e.g.
        ``{("failed", "timeout"): 3, ("dropped", "queue_full"): 1}``.

        Raises:
            LightdSyncError: Called from a signal handler that interrupted the engine.

        .. versionadded:: 0.2.0
        """
        return self._runtime.read("outcome_reasons", Outbox.reasons)

    def latency_histogram(self) -> LatencyHistogram:
        """
        Return how long successful deliveries took, as a histogram.

        Raises:
            LightdSyncError: Called from a signal handler that interrupted the engine.

        .. versionadded:: 0.1.0
        """
        return self._runtime.read("latency_histogram", Outbox.latency)

    @property
    def health(self) -> HealthState:
        """What the last health check found (``healthy`` is None before the first)."""
        return self._runtime.health.state

    def check_health(self) -> HealthState:
        """Check the remote's health now, in the calling thread, and return the new state."""
        self._runtime.reentry.refuse("check_health")
        return self._runtime.health.check()

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
        return reloading.reload(
            self._runtime, config, source=self._source, own_transport=self._own_transport
        )

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
        self._runtime.install_sighup(self.reload)
