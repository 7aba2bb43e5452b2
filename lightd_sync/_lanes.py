"""
Lanes: the delivery threads of one generation, and who of them takes the next batch.

Every update goes into one intake queue. One thread at a time, the one that
holds the *baton*, takes from it: everything queued (up to :data:`MAX_BATCH`
per batch, never two updates of one server) and delivers it. While the
deliveries are quick, that thread keeps the baton and the others stay asleep:
beside a busy host thread every wake-up of a thread costs a wait for the GIL
(up to the 5 ms switch interval) and a forced switch away from the host, so
one thread taking bigger batches slows the host less than four taking small
ones. When a delivery is slow (the last batch took longer than
:data:`HAND_OFF`), more is queued than one batch holds, or a delivery waits
(a retry's back-off), the thread passes the baton on before it delivers and
the next thread takes the next batch meanwhile: up to ``workers`` batches are
then in flight at once.

One server's updates are still delivered in order and never two at once: a
server with an update in flight is *busy*, and its newer updates are *held*
until that one's outcome, then made *ready* one by one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Callable, Optional, Union

from ._forksafe import after_fork_in_child
from ._pending import Pending
from ._policy import bounded

__all__ = ["HAND_OFF", "MAX_BATCH", "Lanes"]

#: The most updates a lane takes at one wake-up (the HTTP transport pipelines them).
MAX_BATCH = 32

#: A batch that took longer than this (seconds) makes the next batches go out in parallel.
HAND_OFF = 0.05


class _Nudge:
    """Put into the intake to wake the taker: an update became ready, or the last one ended."""


_NUDGE = _Nudge()
_Entry = Union[Pending, _Nudge, None]  # None: stop once everything queued is delivered


class _Baton:
    """One thread's hold on the baton during one batch; :meth:`hand_off` lets it go early."""

    __slots__ = ("_lock", "held")

    def __init__(self, lock: threading.Lock, held: bool) -> None:
        self._lock = lock
        self.held = held

    def hand_off(self) -> None:
        """Let the next thread take batches (idempotent; only the thread holding it calls this)."""
        if self.held:
            self.held = False
            self._lock.release()


class Lanes:
    """
    A fixed set of delivery threads sharing one intake.

    The engine's ledger bounds how much is queued and is the only caller of
    :meth:`put`. A reload that changes ``workers`` builds a new
    :class:`Lanes` whose threads wait on *gate* until the old ones have
    drained, so no update overtakes an older one.

    Args:
        count: How many threads.
        deliver: Called in a thread with each batch it takes and a callable
            that passes the baton on (call it before waiting: others may
            deliver meanwhile).
        name_suffix: Added to the thread names (``lightd-sync-lane-0-g2``).
        gate: If given, the threads deliver nothing before it is set.
        slow_after: A batch that took longer (seconds) makes the next ones
            go out in parallel (:data:`HAND_OFF`).
    """

    def __init__(
        self,
        count: int,
        deliver: Callable[[list[Pending], Callable[[], None]], None],
        *,
        name_suffix: str = "",
        gate: Optional[threading.Event] = None,
        slow_after: float = HAND_OFF,
    ) -> None:
        self._deliver = deliver
        self._slow_after = slow_after
        self._gate = gate
        # SimpleQueue: put() is one C call that never blocks (the hot path).
        self._intake: queue.SimpleQueue[_Entry] = queue.SimpleQueue()
        # The baton: held by the one thread that takes from the intake (or may
        # take next); the others wait for it here. Not a guard of data.
        self._baton = threading.Lock()
        # Guards _busy, _held, _ready, _slow, _stopping and _running.
        self._lock = threading.Lock()
        self._busy: set[str] = set()  # servers with an update ready or in flight
        self._held: dict[str, deque[Pending]] = {}  # a busy server's newer updates, oldest first
        self._ready: deque[Pending] = deque()  # updates of busy servers whose turn it is
        self._slow = False  # the last batch took longer than slow_after
        self._stopping = False  # the stop mark was taken from the intake
        self._running = count  # threads not ended yet
        self._threads = [
            threading.Thread(
                target=self._run, name=f"lightd-sync-lane-{i}{name_suffix}", daemon=True
            )
            for i in range(count)
        ]
        self.count = count
        #: Called in the last thread that ends (a reload opens the next gate).
        self.on_drained: Optional[Callable[[], None]] = None
        after_fork_in_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._baton = threading.Lock()
        self._lock = threading.Lock()

    def put(self, item: Pending) -> None:
        """Queue *item* (the ledger calls this, under its lock)."""
        self._intake.put(item)

    def start(self) -> None:
        """Start every thread."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Ask every thread to end once what is queued now is delivered."""
        self._intake.put(None)

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

    # -- a thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self._gate is not None:
                self._gate.wait()
            baton, holding = self._baton, False
            while True:
                if not holding:
                    baton.acquire()
                    holding = True
                batch, share = self._take()
                if batch is None:
                    self._intake.put(None)  # for the next thread
                    baton.release()
                    return
                hold = _Baton(baton, holding)
                if share:
                    hold.hand_off()
                started = time.monotonic()
                try:
                    self._deliver(batch, hold.hand_off)
                except BaseException:
                    hold.hand_off()  # the thread ends: the others must not wait for it
                    raise
                finally:
                    holding = hold.held
                    if self._finished(batch, time.monotonic() - started) and not holding:
                        self._intake.put(_NUDGE)
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last and self.on_drained is not None:
                self.on_drained()

    def _take(self) -> tuple[Optional[list[Pending]], bool]:
        """
        The next batch and whether to pass the baton on before delivering it.

        Called holding the baton; waits on the intake while nothing is ready.
        ``None`` once the stop mark was taken and nothing is left anywhere.
        """
        intake = self._intake
        drained: list[_Entry] = []
        while True:
            while not intake.empty():  # one taker at a time: get_nowait cannot fail
                drained.append(intake.get_nowait())
            with self._lock:
                batch = self._sort(drained)
                if batch:
                    return batch, self._slow or bool(self._ready) or not intake.empty()
                if self._stopping and not self._busy:
                    return None, False
            drained = [intake.get()]  # nothing yet: wait for an update, a nudge or the end

    def _sort(self, drained: list[_Entry]) -> list[Pending]:
        """File what came from the intake and take a batch, ready updates first. Under _lock."""
        busy, held, ready = self._busy, self._held, self._ready
        for entry in drained:
            if entry is None:
                self._stopping = True
            elif isinstance(entry, Pending):
                server = entry.server
                if server in busy:
                    waiting = held.get(server)
                    if waiting is None:
                        held[server] = waiting = deque()
                    waiting.append(entry)
                else:
                    busy.add(server)
                    ready.append(entry)
        batch: list[Pending] = []
        while ready and len(batch) < MAX_BATCH:
            batch.append(ready.popleft())
        return batch

    def _finished(self, batch: list[Pending], seconds: float) -> bool:
        """Free the batch's servers (or ready their next update); True if the taker must look."""
        nudge = False
        with self._lock:
            self._slow = seconds > self._slow_after
            busy, held, ready = self._busy, self._held, self._ready
            for item in batch:
                server = item.server
                waiting = held.get(server)
                if waiting:
                    ready.append(waiting.popleft())  # the server stays busy
                    if not waiting:
                        del held[server]
                    nudge = True
                else:
                    busy.discard(server)
            if self._stopping and not busy:
                nudge = True
        return nudge
