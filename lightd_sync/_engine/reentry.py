"""
Signal handlers that call the engine: Python runs them in the main thread only.

A handler runs between two bytecodes of whatever the main thread was doing,
so it may interrupt the engine's own short critical section (the outbox lock
held, or about to be taken) on the same stack. :class:`Reentry` knows whether
the main thread is inside one, and keeps what a handler submitted meanwhile.

The rule that keeps every handler's cost constant: a handler that interrupted
the engine never takes a lock and never works through what earlier handlers
left. It appends its update to :attr:`Reentry.deferred` (one atomic append)
or asks for a close (one attribute store). The interrupted section, once it
has left the lock, only wakes a worker: the worker thread admits what was
deferred, where no handler can interrupt it.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterator
from typing import Callable, Optional

from .._exceptions import LightdSyncError
from .item import Item

__all__ = ["MAIN", "Reentry"]


class _Main:
    """The main thread's ident (renewed by the engine in a forked child)."""

    __slots__ = ("ident",)

    def __init__(self) -> None:
        self.ident = threading.main_thread().ident

    def renew(self) -> None:
        self.ident = threading.get_ident()


#: Compare ``threading.get_ident()`` with ``MAIN.ident`` (one attribute read on the hot path).
MAIN = _Main()


class Reentry:
    """
    Whether the main thread is inside one of the engine's critical sections, and what waits.

    ``inside`` is read and written by the main thread only (a handler runs
    there too). ``deferred`` is a deque: appended by handlers, popped by a
    worker, each operation atomic. ``close_wanted`` is the budget of a
    ``close()`` a handler asked for (``None``: none asked).

    Args:
        hand_on: Called in the main thread, outside any section, when a
            section ends and a handler left something (:attr:`wanted`).
    """

    __slots__ = ("close_wanted", "deferred", "hand_on", "inside")

    def __init__(self, hand_on: Callable[[], None]) -> None:
        self.hand_on = hand_on
        self.inside = False
        #: Updates that handlers submitted while the engine was interrupted.
        self.deferred: deque[Item] = deque()
        self.close_wanted: Optional[float] = None

    def interrupted(self) -> bool:
        """Whether the caller is a signal handler that interrupted the engine's own section."""
        return self.inside and threading.get_ident() == MAIN.ident

    @property
    def wanted(self) -> bool:
        """Whether a handler left something for the interrupted section to hand on."""
        return bool(self.deferred) or self.close_wanted is not None

    @contextlib.contextmanager
    def section(self) -> Iterator[None]:
        """Mark the main thread inside the engine while it may hold a lock a handler wants."""
        if threading.get_ident() != MAIN.ident or self.inside:
            yield
            return
        self.inside = True
        try:
            yield
        finally:
            self.inside = False
            if self.wanted:
                self.hand_on()

    def refuse(self, name: str) -> None:
        """Raise if the caller is a signal handler that interrupted the engine."""
        if self.interrupted():
            raise LightdSyncError(
                f"{name}: called from a signal handler that interrupted the engine; "
                "call it outside the handler (stats() works there)"
            )
