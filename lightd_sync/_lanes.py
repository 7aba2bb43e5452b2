"""Lanes: the delivery threads of one generation."""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Optional

from ._forksafe import after_fork_in_child
from ._pending import Pending
from ._policy import bounded

__all__ = ["MAX_BATCH", "Lanes"]

#: The most updates a lane takes at one wake-up (the HTTP transport pipelines them).
MAX_BATCH = 32


class Lanes:
    """
    A fixed set of delivery threads, each with its own FIFO queue.

    One server always maps to the same lane, so its updates are delivered in
    the order submitted and never two at once, while lanes run in parallel.
    The queues are unbounded by themselves: the engine's ledger bounds their
    sum and is the only caller of :meth:`put`. A lane takes everything queued
    at once (up to :data:`MAX_BATCH`, never two updates of one server) and
    hands it over as one batch: beside a busy host thread, every wake-up of a
    lane costs a wait for the GIL, so fewer wake-ups deliver more. A reload that changes
    ``workers`` builds a new :class:`Lanes` whose threads wait on *gate*
    until the old ones have drained, so no update overtakes an older one.

    Args:
        count: How many lanes.
        deliver: Called in a lane's thread with each batch it takes, in order.
        name_suffix: Added to the thread names (``lightd-sync-lane-0-g2``).
        gate: If given, the threads deliver nothing before it is set.
    """

    def __init__(
        self,
        count: int,
        deliver: Callable[[list[Pending]], None],
        *,
        name_suffix: str = "",
        gate: Optional[threading.Event] = None,
    ) -> None:
        self._deliver = deliver
        self._gate = gate
        # SimpleQueue: put() is one C call that never blocks (the hot path).
        self._queues: list[queue.SimpleQueue[Optional[Pending]]] = [
            queue.SimpleQueue() for _ in range(count)
        ]
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(q,),
                name=f"lightd-sync-lane-{i}{name_suffix}",
                daemon=True,
            )
            for i, q in enumerate(self._queues)
        ]
        self.count = count
        #: Called in the last lane thread that ends (a reload opens the next gate).
        self.on_drained: Optional[Callable[[], None]] = None
        # Guards _running: lane threads not ended yet.
        self._running_lock = threading.Lock()
        self._running = count
        after_fork_in_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._running_lock = threading.Lock()

    def put(self, item: Pending) -> None:
        """Queue *item* on its server's lane (the ledger calls this, under its lock)."""
        self._queues[hash(item.server) % self.count].put(item)

    def start(self) -> None:
        """Start every thread."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Ask every thread to end once what is queued now is delivered."""
        for q in self._queues:
            q.put(None)  # the thread ends when it gets to it

    def join(self, deadline: float) -> bool:
        """Wait until *deadline* (``time.monotonic()``) at most; True if every thread ended."""
        for thread in self._threads:
            if thread.ident is None:  # never started
                continue
            thread.join(bounded(deadline - time.monotonic()))
        return not self.alive

    @property
    def alive(self) -> bool:
        """Whether any thread is still running."""
        return any(t.is_alive() for t in self._threads)

    def _run(self, q: queue.SimpleQueue[Optional[Pending]]) -> None:
        try:
            if self._gate is not None:
                self._gate.wait()
            get, get_nowait, empty, deliver = q.get, q.get_nowait, q.empty, self._deliver
            carry: Optional[Pending] = None  # taken, but its server is in the last batch
            while True:
                item = get() if carry is None else carry
                carry = None
                if item is None:
                    return
                batch, servers, stop = [item], {item.server}, False
                while len(batch) < MAX_BATCH and not empty():  # one consumer: get_nowait works
                    more = get_nowait()
                    if more is None:
                        stop = True
                        break
                    if more.server in servers:  # its turn comes after the older one's outcome
                        carry = more
                        break
                    servers.add(more.server)
                    batch.append(more)
                deliver(batch)
                if stop:
                    return
        finally:
            with self._running_lock:
                self._running -= 1
                last = self._running == 0
            if last and self.on_drained is not None:
                self.on_drained()
