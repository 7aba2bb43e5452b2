"""Logging helpers: one logger tree, and summaries instead of floods."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

__all__ = ["Throttle", "get_logger", "safe_log"]

#: Default window within which repeated events are summed into one log line.
LOG_WINDOW = 10.0


def get_logger(name: str) -> logging.Logger:
    """Return the ``lightd_sync.<name>`` logger."""
    return logging.getLogger(f"lightd_sync.{name}")


def safe_log(
    logger: logging.Logger,
    level: int,
    msg: str,
    *args: object,
    extra: Optional[Mapping[str, Any]] = None,
) -> None:
    """
    Log unless the interpreter is shutting down.

    A daemon thread that logs during finalization can take the stderr lock
    and never give it back (a known way to crash interpreters at exit).
    *extra* becomes attributes of the record (``lightd_server``, ...).
    """
    if sys.is_finalizing():
        return
    logger.log(level, msg, *args, extra=extra)


class Throttle:
    """
    Count events and say when a summary line is due: at most one per *window* seconds.

    Not thread-safe on its own: callers hold the lock that guards their counters.
    """

    __slots__ = ("_clock", "_count", "_last", "window")

    def __init__(
        self, window: float = LOG_WINDOW, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self._clock = clock
        self._count = 0
        self._last: Optional[float] = None

    def hit(self) -> Optional[int]:
        """Count one event; return how many to report now, or None if not due yet."""
        self._count += 1
        now = self._clock()
        if self._last is None or now - self._last >= self.window:
            count, self._count, self._last = self._count, 0, now
            return count
        return None

    def restart(self) -> None:
        """Forget the count and start a new window now."""
        self._count, self._last = 0, self._clock()

    def take(self) -> int:
        """Return (and forget) the events counted but not reported yet."""
        count, self._count = self._count, 0
        return count
