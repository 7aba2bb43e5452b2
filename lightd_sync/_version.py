"""The installed version, looked up once and only when asked for."""

from __future__ import annotations

import functools

__all__ = ["version"]


@functools.cache
def version() -> str:
    """Return the installed version of lightd-sync (``"0+unknown"`` when not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("lightd-sync")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"
