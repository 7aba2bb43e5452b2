"""
Fork safety, written once: callbacks that run in a forked child, held weakly.

A lock that some thread of the parent held at ``fork()`` stays locked for
ever in the child, where that thread does not exist. Every object of the
library that owns a lock (or threads, sockets, a file) registers a method
here; in the child, right after ``fork()`` and before any other code runs,
that method replaces its locks with new ones and forgets the parent's threads.

Bound methods are held through :class:`weakref.WeakMethod` (as OpenTelemetry's
``BatchProcessor`` does), so registering never keeps an engine or a transport
alive. Plain functions (a module's own reset) are held strongly.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Callable, Union

__all__ = ["after_fork_in_child"]

_Ref = Union["weakref.WeakMethod[Callable[[], None]]", Callable[[], Callable[[], None]]]

# Guards _callbacks and _installed. Reentrant: an engine made in a signal
# handler may register while the interrupted code holds it. In the child it is
# replaced before use: the parent may have held it at fork time.
_lock = threading.RLock()
_callbacks: list[_Ref] = []
_installed = False


def after_fork_in_child(callback: Callable[[], None]) -> None:
    """
    Run *callback* in every child forked from now on, before anything else runs there.

    *callback* must not block: it runs while the child has one thread. A bound
    method is held weakly and dropped once its object is gone.
    """
    global _installed
    ref: _Ref
    if hasattr(callback, "__self__") and hasattr(callback, "__func__"):
        ref = weakref.WeakMethod(callback)
    else:

        def ref() -> Callable[[], None]:
            return callback

    with _lock:
        _callbacks[:] = [r for r in _callbacks if r() is not None]
        _callbacks.append(ref)
        if not _installed and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_run_in_child)
        _installed = True


def _run_in_child() -> None:
    global _lock
    _lock = threading.RLock()  # the parent may have held the old one
    for ref in list(_callbacks):
        callback = ref()
        if callback is not None:
            callback()
