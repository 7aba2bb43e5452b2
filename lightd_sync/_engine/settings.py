"""The engine's settings: one frozen value, swapped whole by a reload; and the wait budget."""

from __future__ import annotations

import threading
from typing import Optional

import attrs

from .._config import RemoteConfig
from .policy import DeliveryPolicy

__all__ = ["Settings", "budget", "make_settings"]


@attrs.frozen
class Settings:
    """The config the engine runs on and the delivery policy made from it."""

    config: RemoteConfig
    policy: DeliveryPolicy


def make_settings(config: RemoteConfig) -> Settings:
    """The settings *config* asks for."""
    return Settings(config, DeliveryPolicy.from_config(config))


def budget(timeout: Optional[float], default: float) -> float:
    """
    Seconds to wait for a ``timeout`` argument: any non-negative number, however large.

    ``10**400`` (an int no float holds) and ``math.inf`` become
    ``threading.TIMEOUT_MAX``; negative numbers and nan mean "do not wait".
    The comparisons run before any conversion, so nothing overflows.
    """
    if timeout is None:
        return default
    if not timeout > 0:  # negative, zero or nan
        return 0.0
    if timeout >= threading.TIMEOUT_MAX:
        return threading.TIMEOUT_MAX
    return float(timeout)
