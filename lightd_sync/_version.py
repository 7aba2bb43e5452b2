"""The version of lightd-sync: written here and nowhere else."""

from __future__ import annotations

__all__ = ["__version__", "version"]

#: The one place the version is written. setup.cfg reads it
#: (``version = attr: lightd_sync._version.__version__``), so the installed
#: metadata, ``lightd_sync.__version__`` and ``User-Agent`` always agree.
__version__ = "0.2.0"


def version() -> str:
    """Return the version of lightd-sync, e.g. ``"0.2.0"``."""
    return __version__
