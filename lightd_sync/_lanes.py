"""Lanes: the delivery threads. One server always maps to the same lane."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

__all__ = ["STOP", "Lane"]

#: Put on a lane's queue to make its thread finish after what is queued before it.
STOP: Any = object()


class Lane:
    """
    One delivery thread with its own FIFO queue.

    Updates of one server all go through one lane, so they are delivered in
    the order submitted and never two at once, while lanes run in parallel.
    The lane is unbounded by itself; the engine bounds the sum of all lanes.
    """

    __slots__ = ("_deliver", "_queue", "_thread", "put")

    def __init__(self, index: int, deliver: Callable[[Any], None]) -> None:
        self._deliver = deliver
        # SimpleQueue: put() is one C call and never blocks (the hot path).
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.put = self._queue.put
        self._thread = threading.Thread(
            target=self._run, name=f"lightd-sync-lane-{index}", daemon=True
        )

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

    def _run(self) -> None:
        get, deliver = self._queue.get, self._deliver
        while True:
            item = get()
            if item is STOP:
                return
            deliver(item)
