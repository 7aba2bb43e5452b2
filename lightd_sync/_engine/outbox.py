"""
The outbox: the one owner of every per-server fact and every counter, under one lock.

For each server it knows the latest accepted update, the updates queued
behind, the one in flight (or waiting for its retry), whether the remote
missed the latest, and when that was last re-sent. It feeds the state file
(from under the same lock, so the file never disagrees with it), and it
answers the few questions the rest of the engine asks: admit an update
(:class:`~.intake.Intake`, the caller's side), take the next batch, settle an
outcome, what is due for resync, the counters (this module, the workers' side).

No I/O and no callback runs under its lock; the lock is held for a few dict
and counter operations at a time.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from typing import Optional

from .._ids import new_event_id
from .._model import LatencyHistogram, SyncStats
from .counts import DELIVERED, DROPPED, FAILED, SUPERSEDED, Settled
from .intake import BILLING_FULL, MAX_BATCH, Intake
from .item import Item
from .policy import testing_mode

__all__ = [
    "BILLING_FULL",
    "DELIVERED",
    "DROPPED",
    "FAILED",
    "MAX_BATCH",
    "SUPERSEDED",
    "Outbox",
    "Settled",
]

#: How often a worker waiting for a timer looks again at the testing switch.
_RECHECK = 0.1


class Outbox(Intake):
    """
    Every server's updates, from acceptance to outcome, and the counters that balance.

    Args:
        queue_size: Status updates that may be pending (queued, in flight, waiting) at once.
        max_servers: Servers remembered (least recently updated forgotten first, when idle).
        billing_size: Billing events that may be pending at once (their own bound).
    """

    # -- the workers' side -------------------------------------------------------

    def take(self, limit: int) -> Optional[tuple[list[Item], list[Item]]]:
        """
        Wait for work; return up to *limit* items of different servers, and those superseded.

        Returns ``None`` when the worker should end (closed and nothing left, or
        the pool shrank). A worker with nothing to do waits without waking up.
        """
        with self._lock:
            while True:
                if self._retire:
                    self._retire -= 1
                    return None
                if self._final:
                    return None
                now = time.monotonic()
                superseded: list[Item] = []
                self._fire_timers(now, superseded)
                paused = self._pause_until - now
                if paused > 0 and testing_mode():
                    paused = 0.0
                batch: list[Item] = [] if paused > 0 else self._fill(limit)
                if batch or superseded:
                    for item in batch:
                        if item.event_id is None:
                            item.event_id = new_event_id()
                    return batch, superseded
                if self._closed and not self._queued and not self._billing_pending:
                    return None
                wait: Optional[float] = None
                if self._timers:
                    wait = max(0.0, self._timers[0][0] - now)
                if paused > 0:
                    wait = paused if wait is None else min(wait, paused)
                if wait is not None:
                    wait = min(wait, _RECHECK)  # the testing switch may cut it
                self._sleepers += 1
                try:
                    self._work.wait(wait)
                finally:
                    self._sleepers -= 1

    def _fire_timers(self, now: float, superseded: list[Item]) -> None:
        timers = self._timers
        testing = testing_mode()
        while timers and (testing or timers[0][0] <= now):
            item = heapq.heappop(timers)[2]
            if item.billing is not None:
                self._due.append(item)
                continue
            rec = self._records.get(item.server)
            if rec is not None and rec.held and rec.busy is item:
                # A newer update of the server is queued: the retry gives way.
                rec.busy = None
                superseded.append(item)
                self._count(item, SUPERSEDED, SUPERSEDED, 0.0)
                if not rec.ready:
                    rec.ready = True
                    self._ready.append(item.server)
            else:
                self._due.append(item)

    def _fill(self, limit: int) -> list[Item]:
        batch: list[Item] = []
        servers: set[str] = set()
        due = self._due
        while due and len(batch) < limit:
            item = due.pop()
            batch.append(item)
            servers.add(item.server)
        ready, records = self._ready, self._records
        while ready and len(batch) < limit:
            server = ready.popleft()
            rec = records[server]
            rec.ready = False
            held = rec.held
            assert held  # a ready server has an update held, and none in flight
            item = held.popleft()
            if not held:
                rec.held = None
            rec.busy = item
            batch.append(item)
            servers.add(server)
        billing = self._billing
        while billing and len(batch) < limit and billing[0].server not in servers:
            item = billing.popleft()
            batch.append(item)
            servers.add(item.server)
        return batch

    def retry_later(self, item: Item, delay: float) -> None:
        """Send *item* again after *delay* seconds; it keeps its server busy meanwhile."""
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), item))
            if self._sleepers:
                self._work.notify()  # a sleeping worker recomputes when to wake

    def pause(self, seconds: float) -> None:
        """Take nothing for *seconds* (the remote's ``Retry-After``); never shortened."""
        with self._lock:
            self._pause_until = max(self._pause_until, time.monotonic() + seconds)

    def settle(
        self, item: Item, result: str, reason: Optional[str], seconds: float, resync: bool
    ) -> Optional[Settled]:
        """Count one outcome of a taken *item*; ``None`` if close() already counted it."""
        with self._lock:
            if self._final:
                return None
            settled = self._count(item, result, reason, seconds)
            if item.billing is not None:
                return settled
            server = item.server
            rec = self._records.get(server)
            if rec is None:
                return settled
            if rec.busy is item:
                rec.busy = None
                if rec.held and not rec.ready:
                    rec.ready = True
                    self._ready.append(server)
                    if self._sleepers:
                        self._work.notify()
            if rec.latest is item:
                if result == DELIVERED and rec.missed:
                    rec.missed = False
                    self._missed.pop(server, None)
                elif result == FAILED and resync and self.resync and not rec.missed:
                    rec.missed = settled.missed = True
                    self._missed[server] = None
            if result == DELIVERED and self.store is not None and item.event_id is not None:
                self.store.acknowledged(server, item.event_id)
            if len(self._records) > self.max_servers:
                self._trim()  # a burst of new servers: the oldest go as they settle
            return settled

    def _count(self, item: Item, result: str, reason: Optional[str], seconds: float) -> Settled:
        """Count an outcome of a pending item (under the lock)."""
        if item.billing is not None:
            self._billing_pending -= 1
        else:
            self._queued -= 1
        settled = self.counts.outcome(result, reason, seconds)
        if not self._queued and not self._billing_pending:
            self._wake_idle()
        return settled

    def _wake_idle(self) -> None:
        for event in self._idle:
            event.set()
        self._idle.clear()
        if self._closed:
            self._work.notify_all()  # workers end once nothing is left

    # -- resync --------------------------------------------------------------------

    def resync_due(self, interval: float) -> tuple[int, int]:
        """
        Queue again the latest update of each server the remote missed, when due.

        Only as many as there is room for (a resync never drops anything), and
        each server at most once per *interval* seconds. Returns (queued, still missed).
        """
        with self._lock:
            if self._closed or not self._missed:
                return 0, len(self._missed)
            now = time.monotonic()
            room = self.queue_size - self._queued
            sent = 0
            for server in list(self._missed):
                if sent >= room:
                    break
                rec = self._records[server]
                if not rec.idle() or now - rec.resent_at < interval:
                    continue
                del self._missed[server]
                rec.missed = False
                rec.resent_at = now
                rec.held = deque((rec.latest,))
                self.counts.submitted += 1
                self.counts.resynced += 1
                self._queued += 1
                rec.ready = True
                self._ready.append(server)
                sent += 1
            if sent:
                self._work.notify(sent)
            return sent, len(self._missed)

    # -- lifecycle -------------------------------------------------------------------

    def resize(self, queue_size: int, max_servers: int, resync: bool) -> None:
        """New bounds (a reload): nothing queued is dropped."""
        with self._lock:
            self.queue_size = queue_size
            self.billing_size = queue_size
            self.max_servers = max_servers
            self.resync = resync
            if not resync:
                for server in self._missed:
                    self._records[server].missed = False
                self._missed.clear()
            self._trim()

    def retire(self, count: int) -> int:
        """
        Ask *count* workers to end after their batch; a negative count cancels such requests.

        Returns how many more workers must start (what cancelling could not cover).
        """
        with self._lock:
            if count >= 0:
                self._retire += count
                self._work.notify_all()
                return 0
            cancel = min(-count, self._retire)
            self._retire -= cancel
            return -count - cancel

    def wake(self) -> None:
        """Wake a worker (what a signal handler deferred waits for one)."""
        with self._lock:
            self._work.notify()

    def close(self) -> None:
        """Admit nothing more; workers end once what is pending is settled."""
        with self._lock:
            self._closed = True
            self._work.notify_all()

    @property
    def closed(self) -> bool:
        """Whether nothing more is admitted."""
        return self._closed

    def finish(self) -> tuple[int, int, int]:
        """Make the counts final: what is pending failed (``closed``); (left, drops, fails)."""
        with self._lock:
            left = self._queued + self._billing_pending
            if not self._final:
                self._closed = self._final = True
                drops, fails = self.counts.fail_left(left)
                self._queued = self._billing_pending = 0
                self._wake_idle()
                self._work.notify_all()
                return left, drops, fails
            return left, 0, 0

    def idle_event(self) -> Optional[threading.Event]:
        """``None`` if nothing is pending; else an event set once nothing is."""
        with self._lock:
            if not self._queued and not self._billing_pending:
                return None
            event = threading.Event()
            self._idle.append(event)
            return event

    # -- reading ---------------------------------------------------------------------

    def stats(self) -> SyncStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return self.stats_unlocked()

    def stats_unlocked(self) -> SyncStats:
        """A snapshot without the lock (a signal handler that interrupted the engine)."""
        return self.counts.snapshot()

    def reasons(self) -> dict[tuple[str, str], int]:
        """Outcomes but delivered, by ``(result, reason)``."""
        with self._lock:
            return dict(self.counts.reasons)

    def latency(self) -> LatencyHistogram:
        """How long successful deliveries took."""
        with self._lock:
            return self.counts.histogram()

    def drop_window(self) -> float:
        """Seconds over which drops are summed into one log line."""
        return self.counts.drop_log.window

    @property
    def servers(self) -> int:
        """How many servers are remembered."""
        return len(self._records)
