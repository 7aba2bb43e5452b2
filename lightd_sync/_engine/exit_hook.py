"""The exit hook: engines with threads still open at interpreter exit are closed, together."""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from typing import Protocol

from .._forksafe import after_fork_in_child

__all__ = ["close_at_exit", "forget"]


class _Closable(Protocol):
    def stop_for_exit(self) -> float: ...  # stop taking updates; return its shutdown_timeout

    def close(self, timeout: float) -> None: ...


# Engines with threads. Weak: an engine the daemon dropped is not kept alive by
# us. A WeakSet is thread-safe for add, discard and copying.
_OPEN: weakref.WeakSet[_Closable] = weakref.WeakSet()
_lock = threading.Lock()  # guards _installed
_installed = False


def _close_all() -> None:
    """Give all open engines one shared deadline: the longest ``shutdown_timeout``."""
    engines = list(_OPEN)
    if not engines:
        return
    # Stop taking updates everywhere first, so that all drain at once.
    deadline = time.monotonic() + max(engine.stop_for_exit() for engine in engines)
    for engine in engines:
        engine.close(timeout=max(0.0, deadline - time.monotonic()))


def close_at_exit(engine: _Closable) -> None:
    """Close *engine* at interpreter exit unless :func:`forget` is called first."""
    global _installed
    if not _installed:
        with _lock:
            if not _installed:
                atexit.register(_close_all)
                _installed = True
    _OPEN.add(engine)


def forget(engine: _Closable) -> None:
    """*engine* was closed (or belongs to a parent process): nothing to do at exit."""
    _OPEN.discard(engine)


def _reset_lock() -> None:
    global _lock
    _lock = threading.Lock()


after_fork_in_child(_reset_lock)
