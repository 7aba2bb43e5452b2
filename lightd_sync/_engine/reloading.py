"""Reloading a running engine: the new config checked, one frozen settings value swapped."""

from __future__ import annotations

import logging
from typing import Optional

from .._config import RemoteConfig, load_config
from .._exceptions import ConfigError, LightdSyncError
from .._logutil import safe_log
from .._transports.registry import make_transport
from .reload import TRANSPORT_KEYS, ReloadResult
from .runtime import Runtime, log
from .settings import make_settings
from .slot import close_quietly

__all__ = ["reload"]


def reload(
    runtime: Runtime,
    config: Optional[RemoteConfig],
    *,
    source: Optional[str],
    own_transport: bool,
) -> ReloadResult:
    """
    Apply *config* (or the file *source*, re-read) to *runtime* (see ``SyncEngine.reload``).

    Args:
        runtime: The engine's running parts.
        config: The new config; ``None``: re-read *source*.
        source: The ``config.json`` the engine was built from, or ``None``.
        own_transport: Whether the engine built its transport (and may build another).
    """
    if runtime.reentry.interrupted():
        raise LightdSyncError(
            "reload: called from a signal handler that interrupted the engine; "
            "use install_sighup_reload(), which reloads from a thread"
        )
    with runtime.reload_lock:
        if config is None:
            if source is None:
                raise ConfigError(
                    "reload: this engine was not built from a file; pass a RemoteConfig"
                )
            config = load_config(source)
        elif not isinstance(config, RemoteConfig):
            raise TypeError(f"config must be a RemoteConfig, not {type(config).__name__}")
        result = ReloadResult.between(runtime.settings.config, config)
        if not result.changed:
            return result
        changed = set(result.changed)
        if "state_path" in changed and runtime.store is not None:
            raise ConfigError(
                "remote.state_path: cannot change on a running engine (the file holds "
                "what the remote has not acknowledged); restart the daemon to move it"
            )
        rebuild = own_transport and bool(TRANSPORT_KEYS & changed)
        transport = make_transport(config) if rebuild else None
        try:
            old = runtime.apply(make_settings(config), transport, changed)
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
