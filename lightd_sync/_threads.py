"""
The library's threads never take the process's signals: the daemon's own threads do.

The kernel hands a signal sent to a process to any one of its threads that
does not block it. CPython runs the Python handler in the main thread, but
only once that thread runs again: a main thread asleep in ``signal.pause()``,
``select()`` or a lock's ``acquire()`` is woken only if the signal was handed
to it. So a ``SIGTERM`` or ``SIGHUP`` that the kernel gave to one of our
workers could wait for as long as the daemon's main thread sleeps.

Every thread of the library is therefore started with the signals a daemon
handles blocked (:data:`QUIET`); a thread inherits its creator's mask, so the
threads those threads start (waitress's, a reload's) are quiet too. The
kernel then gives those signals to a thread of the daemon. Faults that belong
to one thread (``SIGSEGV``, ``SIGPIPE``, ...) are never blocked.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["QUIET", "quiet_signals", "start_quietly"]

#: What a daemon handles (or the default action ends it for): never taken by our threads.
QUIET: frozenset[int] = frozenset(
    getattr(signal, name)
    for name in (
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGTERM",
        "SIGUSR1",
        "SIGUSR2",
        "SIGALRM",
        "SIGCHLD",
        "SIGWINCH",
    )
    if hasattr(signal, name)
)


@contextmanager
def quiet_signals() -> Iterator[None]:
    """Block :data:`QUIET` in this thread for the block: the threads it starts inherit that."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: no per-thread masks
        yield
        return
    # A signal sent meanwhile waits (pending) or goes to another of the daemon's
    # threads; it is delivered here as the old mask comes back.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, QUIET)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_quietly(thread: threading.Thread) -> None:
    """``thread.start()``, the thread's mask blocking :data:`QUIET` from its first instruction."""
    with quiet_signals():
        thread.start()
