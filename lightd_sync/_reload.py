"""Reload: applying a new config to a running engine, and saying what changed."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Optional

import attrs

from ._config import RemoteConfig, load_config
from ._core import EngineCore, close_quietly
from ._exceptions import ConfigError, LightdSyncError
from ._lanes import Lane
from ._logutil import get_logger, safe_log
from ._transports.base import Transport
from ._transports.registry import make_transport

__all__ = ["ReloadResult", "Reloading"]

log = get_logger("engine")

# Keys whose change needs a new transport; the others apply to the running one.
_TRANSPORT_KEYS = frozenset(
    {"enabled", "url", "token", "transport", "path", "timeout", "workers", "verify"}
    | {"ca_bundle", "client_cert", "client_key", "proxy"}
)


@attrs.frozen
class ReloadResult:
    """
    What :meth:`SyncEngine.reload` changed.

    Attributes:
        changed: The names of the keys whose values changed, sorted.
        config: The config the engine runs on now.

    .. versionadded:: 0.1.0
    """

    changed: tuple[str, ...]
    config: RemoteConfig

    @classmethod
    def between(cls, old: RemoteConfig, new: RemoteConfig) -> ReloadResult:
        """Compare two configs key by key."""
        names = [a.name for a in attrs.fields(RemoteConfig)]
        changed = tuple(sorted(n for n in names if getattr(old, n) != getattr(new, n)))
        return cls(changed=changed, config=new)

    @property
    def token_changed(self) -> bool:
        """Whether the token changed (its value is never shown)."""
        return "token" in self.changed

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready summary: changed keys, token changed or not, config redacted."""
        return {
            "changed": list(self.changed),
            "token": "changed" if self.token_changed else "unchanged",
            "config": self.config.redacted(),
        }


class Reloading(EngineCore):
    """The reload part of :class:`~lightd_sync.SyncEngine` (see its methods)."""

    # Set by SyncEngine.__init__ / _init_lifecycle.
    _source: Optional[str]
    _own_transport: bool
    _reload_lock: threading.Lock  # one reload at a time
    _gate: Optional[threading.Event]
    _old_lanes: list[Lane]
    _reload_waker: Optional[threading.Event]
    _reload_thread: Optional[threading.Thread]

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
            rebuild = self._own_transport and bool(_TRANSPORT_KEYS & set(result.changed))
            transport = make_transport(config) if rebuild else self._transport
            self._apply(config, transport, result)
        safe_log(
            log, logging.INFO, "reloaded the remote config; changed: %s", ", ".join(result.changed)
        )
        return result

    def _apply(self, config: RemoteConfig, transport: Transport, result: ReloadResult) -> None:
        idle: list[Transport] = []  # transports to close now (no I/O under the locks)
        with self._lock:
            closed = self._closed
            if closed:
                if transport is not self._transport:
                    idle.append(transport)  # built for nothing
            else:
                self._config = config
                self._queue_size = config.queue_size
                self._max_servers = config.max_servers
                with self._tlock:
                    if transport is not self._transport:
                        old = self._transport
                        self._transport = transport
                        (self._retired if id(old) in self._users else idle).append(old)
                if "workers" in result.changed and self._lanes:
                    self._replace_lanes(config.workers)
            monitor = self._monitor
        for old in idle:
            close_quietly(old)
        if closed:
            raise LightdSyncError("reload: the engine is closed")
        if monitor is not None:
            monitor.interval = config.health_interval
            if {"url", "token", "transport", "enabled"} & set(result.changed):
                self._health.reset()
            monitor.poke(0.0)

    def _replace_lanes(self, count: int) -> None:
        """Route to *count* new lanes; they wait until the old ones drained. Under _lock."""
        gate = threading.Event()
        old_lanes = self._lanes
        waiting = [len(old_lanes)]

        def one_old_lane_ended() -> None:
            with self._lock:
                waiting[0] -= 1
                if waiting[0] == 0:
                    gate.set()

        for lane in old_lanes:
            lane.on_exit = one_old_lane_ended
            lane.stop()
        lanes = self._new_lanes(count, gate)
        for lane in lanes:
            lane.start()
        self._lanes, self._nlanes, self._gate = lanes, len(lanes), gate
        self._old_lanes = [lane for lane in self._old_lanes if lane.alive]
        self._old_lanes.extend(old_lanes)

    def install_sighup_reload(self) -> None:
        """
        Reload from the file on ``SIGHUP`` (POSIX), the usual daemon convention.

        The signal handler only wakes a ``lightd-sync-reload`` thread, which
        reloads: a reload inside the handler could interrupt this engine's
        own ``update()`` in the same thread. Errors are logged, never raised.
        Call it from the main thread; :meth:`close` ends the thread.

        .. versionadded:: 0.1.0
        """
        with self._lock:
            if self._closed or self._reload_waker is not None:
                return
            waker = threading.Event()
            thread = threading.Thread(
                target=self._reload_loop, args=(waker,), name="lightd-sync-reload", daemon=True
            )
            self._reload_waker, self._reload_thread = waker, thread
        thread.start()
        signal.signal(signal.SIGHUP, lambda signum, frame: waker.set())

    def _reload_loop(self, waker: threading.Event) -> None:
        while True:
            waker.wait()
            waker.clear()
            if self._closed:
                return
            try:
                result = self.reload()
            except LightdSyncError as exc:
                safe_log(log, logging.ERROR, "SIGHUP reload failed, config unchanged: %s", exc)
            else:
                safe_log(log, logging.INFO, "SIGHUP reload: %d keys changed", len(result.changed))
