"""
Signal handlers that call the engine: Python runs them in the main thread only.

A handler runs between two bytecodes of whatever the main thread was doing,
so it may interrupt a call into this very engine while that call holds the
engine's locks below it on the same stack. :class:`Reentry` knows whether
the main thread is inside such a call, and keeps what a handler submitted
meanwhile for the interrupted call (or a lane) to admit once it is safe.
Other threads never need it: a handler never interrupts them.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, TypeVar

from ._forksafe import after_fork_in_child
from ._pending import Pending

__all__ = ["MAIN", "Reentry"]

T = TypeVar("T")


class _Main:
    """The main thread's ident (renewed in a forked child, whose main thread forked)."""

    __slots__ = ("__weakref__", "ident")

    def __init__(self) -> None:
        self.ident = threading.main_thread().ident

    def renew(self) -> None:
        self.ident = threading.get_ident()


#: Compare ``threading.get_ident()`` with ``MAIN.ident`` (one attribute read on the hot path).
MAIN = _Main()
after_fork_in_child(MAIN.renew)


class Reentry:
    """
    Whether the main thread is inside one of an engine's calls, and what handlers queued meanwhile.

    ``inside`` is read and written by the main thread only. The queue of
    deferred updates is a deque: appended and popped atomically, so a lane
    may admit them too.

    Args:
        admit: Admits one update (the engine's own path, outside every handler).
    """

    __slots__ = ("_admit", "deferred", "inside")

    def __init__(self, admit: Callable[[Pending], bool]) -> None:
        self._admit = admit
        self.inside = False
        #: What handlers submitted meanwhile (test it before calling admit_deferred).
        self.deferred: deque[Pending] = deque()

    def interrupted(self) -> bool:
        """Whether the caller is a signal handler that interrupted a call into the engine."""
        return self.inside and threading.get_ident() == MAIN.ident

    def guarded(self, call: Callable[[], T]) -> T:
        """Run *call* marked as inside the engine (in the main thread; elsewhere just run it)."""
        if self.inside or threading.get_ident() != MAIN.ident:
            return call()
        self.inside = True
        try:
            return call()
        finally:
            self.inside = False

    def defer(self, item: Pending) -> None:
        """Keep *item*, submitted by a handler that interrupted the engine, for later."""
        self.deferred.append(item)

    def admit_deferred(self) -> None:
        """Admit what handlers queued; the caller is not itself nested in a handler."""
        deferred = self.deferred
        while deferred:
            try:
                item = deferred.popleft()
            except IndexError:  # another thread took the last one
                return
            self._admit(item)

    def drain(self) -> None:
        """Admit what handlers queued, from any call that is not itself nested in one."""
        if not self.deferred:
            return
        if threading.get_ident() != MAIN.ident:
            self.admit_deferred()
        elif not self.inside:
            self.inside = True
            try:
                self.admit_deferred()
            finally:
                self.inside = False
