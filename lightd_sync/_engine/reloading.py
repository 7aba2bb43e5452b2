"""Reloading the config of a running engine: one frozen settings value swapped, the pool resized."""

from __future__ import annotations

import logging
import os
from typing import Optional

from .._config import RemoteConfig, load_config
from .._exceptions import ConfigError, LightdSyncError
from .._logutil import safe_log
from .._transports.base import Transport
from .._transports.registry import make_transport
from .reload import TRANSPORT_KEYS, ReloadResult, SighupReload
from .runtime import Runtime, log
from .settings import Settings, make_settings
from .slot import close_quietly

__all__ = ["Reloading"]


class Reloading(Runtime):
    """The reload half of :class:`~lightd_sync.SyncEngine`."""

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
