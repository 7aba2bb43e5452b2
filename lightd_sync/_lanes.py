"""Lanes: the delivery threads. One server always maps to the same lane."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Optional

__all__ = ["STOP", "Lane"]

#: Put on a lane's queue to make its thread finish after what is queued before it.
STOP: Any = object()


class Lane:
    """
    One delivery thread with its own FIFO queue.

    Updates of one server all go through one lane, so they are delivered in
    the order submitted and never two at once, while lanes run in parallel.
    The lane is unbounded by itself; the engine bounds the sum of all lanes.

    Args:
        name: The thread's name (``lightd-sync-lane-…``).
        deliver: Called with each item and this lane, in the lane's thread.
        gate: If given, the thread waits for it before delivering anything
            (new lanes wait for the old ones to drain after a reload, so
            that no server's updates overtake each other).
    """

    __slots__ = ("_deliver", "_gate", "_queue", "_thread", "not_before", "on_exit", "put")

    def __init__(
        self,
        name: str,
        deliver: Callable[[Any, Lane], None],
        gate: Optional[threading.Event] = None,
    ) -> None:
        self._deliver = deliver
        self._gate = gate
        #: Called in the lane's thread when it ends (a reload counts old lanes out).
        self.on_exit: Optional[Callable[[], None]] = None
        # SimpleQueue: put() is one C call and never blocks (the hot path).
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.put = self._queue.put
        #: time.monotonic() before which this lane sends nothing (the remote's Retry-After).
        self.not_before = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish once what is queued now is delivered."""
        self._queue.put(STOP)

    def join(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for the thread to end; True if it has."""
        if self._thread.ident is None:  # never started
            return True
        self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        """Whether the thread is running."""
        return self._thread.is_alive()

    def _run(self) -> None:
        if self._gate is not None:
            self._gate.wait()
        get, deliver = self._queue.get, self._deliver
        try:
            while True:
                item = get()
                if item is STOP:
                    return
                deliver(item, self)
        finally:
            if self.on_exit is not None:
                self.on_exit()
