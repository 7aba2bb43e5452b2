"""
lightd_sync: push Lightd container install status to a remote management server.

Embed a :class:`SyncEngine` in a threaded daemon; ``update()`` costs about a
queue put and never raises for network trouble.

>>> import lightd_sync
>>> config = lightd_sync.load_config({"remote": {"enabled": False}})
>>> with lightd_sync.SyncEngine(config) as engine:
...     engine.update("my-server-001", "installing")
True
"""

from __future__ import annotations

import logging
from typing import Any

from ._config import RemoteConfig, load_config
from ._engine import SyncEngine
from ._engine.reload import ReloadResult
from ._exceptions import (
    AuthRejectedError,
    ConfigError,
    DeliveryError,
    LightdSyncError,
    RemoteRejectedError,
    RemoteTimeoutError,
    RemoteUnreachableError,
)
from ._model import (
    BillingEvent,
    HealthState,
    LatencyHistogram,
    Lifecycle,
    Outcome,
    Status,
    SyncStats,
    Update,
)
from ._transports.base import Transport
from ._transports.file import FileTransport
from ._transports.null import NullTransport
from ._transports.registry import available_transports

__all__ = [
    "AuthRejectedError",
    "BillingEvent",
    "ConfigError",
    "DeliveryError",
    "FileTransport",
    "HealthState",
    "HttpTransport",
    "LatencyHistogram",
    "Lifecycle",
    "LightdSyncError",
    "NullTransport",
    "Outcome",
    "ReloadResult",
    "RemoteConfig",
    "RemoteRejectedError",
    "RemoteTimeoutError",
    "RemoteUnreachableError",
    "RequestsTransport",
    "Status",
    "SyncEngine",
    "SyncStats",
    "Transport",
    "Update",
    "__version__",
    "available_transports",
    "load_config",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    # Looked up on first use: importlib.metadata and urllib3 cost import time.
    if name == "__version__":
        from ._version import version

        return version()
    if name == "HttpTransport":
        from ._transports.http import HttpTransport

        return HttpTransport
    if name == "RequestsTransport":
        from ._transports.requests_transport import RequestsTransport

        return RequestsTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
