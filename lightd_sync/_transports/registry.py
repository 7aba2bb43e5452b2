"""Choosing a transport by name: the built-in ones and plugins' entry points."""

from __future__ import annotations

import sys
from typing import Any, Callable

from .._config import RemoteConfig
from .._exceptions import ConfigError
from .._secrets import secrets_of
from .base import Transport

__all__ = ["ENTRY_POINT_GROUP", "available_transports", "make_transport"]

#: Third-party transports register a factory ``(RemoteConfig) -> Transport`` here.
ENTRY_POINT_GROUP = "lightd_sync.transports"

TransportFactory = Callable[[RemoteConfig], Transport]


def _http(config: RemoteConfig) -> Transport:
    from .http import HttpTransport  # urllib3 is imported only when it is used

    return HttpTransport(config)


def _file(config: RemoteConfig) -> Transport:
    from .file import FileTransport

    assert config.path is not None  # RemoteConfig checks this when enabled
    return FileTransport(config.path)


def _null(config: RemoteConfig) -> Transport:
    from .null import NullTransport

    return NullTransport()


def _requests(config: RemoteConfig) -> Transport:
    from .requests_transport import RequestsTransport  # requests is imported only when used

    return RequestsTransport(config)


_BUILTIN: dict[str, TransportFactory] = {
    "http": _http,
    "requests": _requests,
    "file": _file,
    "null": _null,
}


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    if sys.version_info >= (3, 10):
        found = entry_points(group=ENTRY_POINT_GROUP)
    else:  # 3.9 returns a dict of groups
        found = entry_points().get(ENTRY_POINT_GROUP, ())
    return {ep.name: ep for ep in found}


def available_transports() -> list[str]:
    """Return the names of every transport that can be selected, sorted."""
    return sorted(set(_BUILTIN) | set(_entry_points()))


def make_transport(config: RemoteConfig) -> Transport:
    """
    Build the transport *config* selects (the null one when sync is disabled).

    Raises:
        ConfigError: No transport has that name; the message lists those available.
    """
    name = config.effective_transport
    factory = _BUILTIN.get(name)
    if factory is None:
        plugin = _entry_points().get(name)
        if plugin is None:
            names = ", ".join(available_transports())
            raise ConfigError(f"remote.transport: unknown transport {name!r}; available: {names}")
        try:
            factory = plugin.load()
        except Exception as exc:
            raise ConfigError(
                f"remote.transport: the plugin {name!r} failed to load: {exc!r}"
            ) from exc
    transport = factory(config)
    if not isinstance(transport, Transport):
        raise ConfigError(
            f"remote.transport: the factory of {name!r} returned "
            f"{type(transport).__name__}, not a Transport"
        )
    if not transport._lightd_secrets:  # the one secrets rule (base.py), for plugins too
        transport._lightd_secrets = secrets_of(config.token, config.proxy)
    return transport
