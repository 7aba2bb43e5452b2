"""
The ledger: where every update is, and how many ended which way.

It admits updates into the lanes (the queue bound, the closed flag), knows
each server's latest update, counts every outcome by result and reason,
keeps the latency histogram and the log throttles, and wakes
:meth:`SyncEngine.flush` waiters. One lock guards all of it, so that every
:class:`~lightd_sync.SyncStats` snapshot balances and ``update()`` takes one
lock, once.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Optional

from ._forksafe import after_fork_in_child
from ._lanes import Lanes
from ._logutil import Throttle
from ._model import LATENCY_BUCKETS, LatencyHistogram, SyncStats
from ._pending import Pending
from ._policy import bounded

if TYPE_CHECKING:
    from ._state import StateStore

__all__ = ["DELIVERED", "DROPPED", "FAILED", "SUPERSEDED", "Ledger", "Settled"]

DELIVERED, FAILED, DROPPED, SUPERSEDED = "delivered", "failed", "dropped", "superseded"


class Settled:
    """What :meth:`Ledger.settle` tells the lane to log after counting an outcome."""

    __slots__ = ("due", "first", "recovered")

    def __init__(self, first: bool = False, due: int = 0, recovered: int = 0) -> None:
        self.first = first  #: the first failure after deliveries went well: log it
        self.due = due  #: failures summed up since the last failure log line, if one is due
        self.recovered = recovered  #: failures not logged before deliveries recovered


class Ledger:
    """
    Admission into the lanes, the counters, the latency histogram and the log throttles.

    Args:
        queue_size: Updates that may be pending (queued or in flight) at once.
        max_servers: Servers whose latest update is remembered (least
            recently updated forgotten first).
        lanes: Where admitted updates go; :meth:`reroute` swaps them on reload.
    """

    def __init__(
        self, queue_size: int, max_servers: int = 10_000, lanes: Optional[Lanes] = None
    ) -> None:
        # Guards every attribute below, and every put on the current lanes (so
        # that nothing is queued behind a lane's stop). Reentrant: update() or
        # close() may run in a signal handler that interrupted update() in the
        # same thread. Replaced in a forked child, which starts afresh anyway.
        self.lock = threading.RLock()
        self._idle = threading.Condition(self.lock)  # notified when pending reaches 0
        self.queue_size = queue_size
        self.max_servers = max_servers
        # server -> its latest update; a plain dict kept in order of last update
        # (re-inserted on each one). Read without the lock: one dict read is atomic.
        self._latest: dict[str, Pending] = {}
        self._lanes = lanes
        #: The state file's store, told of every update that becomes a server's latest.
        self.store: Optional[StateStore] = None
        self._closed = False  # no more updates are admitted
        self._final = False  # the counts are final: late outcomes are not counted
        self._submitted = self._delivered = self._failed = 0
        self._dropped = self._superseded = self._resynced = self._pending = 0
        self._reasons: Counter[tuple[str, str]] = Counter()  # (result, reason) -> updates
        self._latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_total = 0.0
        self._drop_log = Throttle()
        self._fail_log = Throttle()
        self._failing = False  # the last outcome was a failure: later ones are summed up
        after_fork_in_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self.lock = threading.RLock()
        self._idle = threading.Condition(self.lock)

    # -- admission (the caller's thread) -------------------------------------

    def admit(self, item: Pending) -> Optional[tuple[str, int]]:
        """
        Count *item* and queue it, or count it as dropped.

        Returns:
            ``None`` if queued; else why it was dropped (``queue_full`` or
            ``closed``) and how many drops to log now (0: not due yet).
        """
        lock = self.lock
        lock.acquire()  # cheaper than `with` on the hot path
        try:
            self._submitted += 1
            latest, server = self._latest, item.server
            latest.pop(server, None)  # re-inserted last: the order is by last update
            latest[server] = item
            if len(latest) > self.max_servers:
                del latest[next(iter(latest))]
            store = self.store
            if store is not None and not self._closed:
                store.accepted(server, item.status, item.data, item.ensure_event_id)
            lanes = self._lanes
            if self._pending < self.queue_size and not self._closed and lanes is not None:
                self._pending += 1
                item.queued = True
                lanes.put(item)
                return None
            self._dropped += 1
            reason = "closed" if self._closed or lanes is None else "queue_full"
            self._reasons[DROPPED, reason] += 1
            return reason, self._drop_log.hit() or 0
        finally:
            lock.release()

    def resize(self, queue_size: int, max_servers: int) -> None:
        """Bound the pending updates and the servers remembered from now on (a reload)."""
        with self.lock:
            self.queue_size = queue_size
            self.max_servers = max_servers
            latest = self._latest
            while len(latest) > max_servers:
                del latest[next(iter(latest))]

    def seed(self, item: Pending) -> None:
        """Remember *item* as its server's latest without queueing it (from the state file)."""
        with self.lock:
            self._latest.pop(item.server, None)
            self._latest[item.server] = item
            while len(self._latest) > self.max_servers:
                del self._latest[next(iter(self._latest))]

    def is_latest(self, item: Pending) -> bool:
        """Whether *item* is still its server's latest update."""
        return self._latest.get(item.server) is item

    def superseded(self, item: Pending) -> bool:
        """Whether a newer update of *item*'s server is queued behind it."""
        newer = self._latest.get(item.server, item)
        return newer is not item and newer.queued

    @property
    def servers(self) -> int:
        """How many servers' latest updates are remembered."""
        return len(self._latest)

    def admit_resync(self, items: list[Pending]) -> list[Pending]:
        """Queue as many of *items* as there is room for; return the rest (never dropped)."""
        with self.lock:
            if self._closed or self._lanes is None:
                return items
            room = max(0, self.queue_size - self._pending)
            for item in items[:room]:
                self._submitted += 1
                self._resynced += 1
                self._pending += 1
                item.queued = True
                self._lanes.put(item)
            return items[room:]

    @property
    def closed(self) -> bool:
        """Whether updates are refused now."""
        return self._closed

    def drop_window(self) -> float:
        """Seconds over which drops are summed into one log line."""
        return self._drop_log.window

    # -- outcomes (lane threads) ---------------------------------------------

    def settle(
        self, item: Pending, result: str, reason: Optional[str], seconds: float = 0.0
    ) -> Optional[Settled]:
        """
        Count one outcome of a queued *item*.

        Returns:
            What to log, or ``None`` if the counts were already final (close
            ran out of time and counted the item as failed).
        """
        with self.lock:
            if self._final:
                return None
            item.queued = False
            self._pending -= 1
            settled = Settled()
            if result == DELIVERED:
                self._delivered += 1
                self._latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
                self._latency_total += seconds
                if self._failing:
                    self._failing = False
                    settled.recovered = self._fail_log.take()
            elif result == SUPERSEDED:
                self._superseded += 1
                self._reasons[SUPERSEDED, SUPERSEDED] += 1
            else:
                self._failed += 1
                self._reasons[FAILED, reason or "unreachable"] += 1
                if not self._failing:
                    self._failing = settled.first = True
                    self._fail_log.restart()
                else:
                    settled.due = self._fail_log.hit() or 0
            if self._pending == 0:
                self._idle.notify_all()
            return settled

    # -- lifecycle -------------------------------------------------------------

    def reroute(self, lanes: Lanes) -> Optional[Lanes]:
        """Send what is admitted from now on to *lanes*; stop the old ones. Return them."""
        with self.lock:
            old, self._lanes = self._lanes, lanes
            if old is not None:
                old.stop()
            return old

    def close(self) -> Optional[Lanes]:
        """Admit nothing more; ask the lanes to end after what is queued. Return them."""
        with self.lock:
            if not self._closed:
                self._closed = True
                if self._lanes is not None:
                    self._lanes.stop()
            return self._lanes

    def finish(self) -> tuple[int, int, int]:
        """
        Make the counts final: what is still pending is failed (``closed``).

        Returns:
            ``(left, drops, failures)``: the updates counted failed now, and the
            drops and failures not logged yet.
        """
        with self.lock:
            left = self._pending
            if not self._final:
                self._failed += left
                if left:
                    self._reasons[FAILED, "closed"] += left
                self._pending = 0
                self._final = True
            self._idle.notify_all()
            return left, self._drop_log.take(), self._fail_log.take()

    def wait_idle(self, deadline: float) -> bool:
        """Wait until nothing is pending or *deadline* (``time.monotonic()``); True if idle."""
        with self.lock:
            while self._pending > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(bounded(remaining))
            return True

    # -- reading ----------------------------------------------------------------

    def stats(self) -> SyncStats:
        """A consistent snapshot of the counters."""
        with self.lock:
            return SyncStats(
                submitted=self._submitted,
                delivered=self._delivered,
                failed=self._failed,
                dropped=self._dropped,
                pending=self._pending,
                superseded=self._superseded,
                resynced=self._resynced,
            )

    def reasons(self) -> dict[tuple[str, str], int]:
        """Updates failed, dropped or superseded, by ``(result, reason)``."""
        with self.lock:
            return dict(self._reasons)

    def latency(self) -> LatencyHistogram:
        """How long successful deliveries took."""
        with self.lock:
            counts = tuple(self._latency)
            return LatencyHistogram(counts=counts, total=self._latency_total, count=sum(counts))
