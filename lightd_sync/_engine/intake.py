"""
The caller's side of the :class:`~.outbox.Outbox`: its state, and admitting updates.

:class:`Intake` holds everything the outbox owns (one lock guards all of it)
and the calls a daemon's thread makes through ``update()``: one short
critical section, no I/O, no callback. :class:`~.outbox.Outbox` adds the
workers' side.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from typing import TYPE_CHECKING, Optional

from .._ids import new_event_id
from .counts import Counts
from .item import Item

if TYPE_CHECKING:
    from .state import StateStore

__all__ = ["BILLING_FULL", "MAX_BATCH", "Intake"]

#: The reason a billing event is dropped when its own queue is full.
BILLING_FULL = "billing_queue_full"
#: The most events one request carries, whatever the transport offers.
MAX_BATCH = 500


class _Record:
    """What the outbox knows of one server (touched only under the outbox lock)."""

    __slots__ = ("busy", "held", "latest", "missed", "ready", "resent_at")

    def __init__(self, latest: Item) -> None:
        self.latest = latest  # the latest accepted update (queued, dropped or from the file)
        self.held: Optional[deque[Item]] = None  # queued, in order, not yet taken
        self.busy: Optional[Item] = None  # in flight, or waiting for its retry
        self.ready = False  # the server is in the outbox's ready queue
        self.missed = False  # the remote may have missed `latest`: re-send when healthy
        self.resent_at = float("-inf")  # time.monotonic() of the last re-send

    def idle(self) -> bool:
        return self.busy is None and not self.held


class Intake:
    """
    The outbox's state, and admitting updates into it (see :class:`~.outbox.Outbox`).

    Args:
        queue_size: Status updates that may be pending (queued, in flight, waiting) at once.
        max_servers: Servers remembered (least recently updated forgotten first, when idle).
        billing_size: Billing events that may be pending at once (their own bound).
    """

    def __init__(self, queue_size: int, max_servers: int, billing_size: int) -> None:
        # Guards every attribute of this object and of its _Records, and the
        # counters. Not reentrant: a signal handler that interrupted the main
        # thread inside it never takes it (see reentry.py).
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # workers wait here for something ready
        self.queue_size = queue_size
        self.max_servers = max_servers
        self.billing_size = billing_size
        self.resync = True
        self.store: Optional[StateStore] = None  # fed from under the lock
        self._records: dict[str, _Record] = {}  # in order of last update
        self._ready: deque[str] = deque()  # servers whose next held update may go
        self._billing: deque[Item] = deque()  # billing events not yet taken, in order
        self._timers: list[tuple[float, int, Item]] = []  # retries: (due, seq, item), a heap
        self._due: list[Item] = []  # retries whose time came
        self._seq = itertools.count()
        self._missed: dict[str, None] = {}  # servers whose latest the remote missed, in order
        self._pause_until = 0.0  # the remote's Retry-After: nothing is taken before
        self._sleepers = 0  # workers waiting on _work
        self._retire = 0  # workers asked to end (a smaller pool)
        self._idle: list[threading.Event] = []  # set when nothing is pending
        self._closed = False  # nothing more is admitted
        self._final = False  # the counts are final: later outcomes are not counted
        self._queued = 0  # status updates pending
        self._billing_pending = 0  # billing events pending
        self.counts = Counts()

    # -- the caller's side -------------------------------------------------------

    def admit(self, item: Item) -> Optional[tuple[str, int]]:
        """Count *item* and queue it; or count it dropped and say why and how many to log."""
        server = item.server
        lock = self._lock
        lock.acquire()  # cheaper than `with` on the hot path
        try:
            counts = self.counts
            counts.submitted += 1
            records = self._records
            rec = records.pop(server, None)
            if rec is None:
                rec = _Record(item)
                records[server] = rec
                if len(records) > self.max_servers:
                    self._trim()
            else:
                records[server] = rec  # re-inserted last: the order is by last update
                rec.latest = item
            store = self.store
            if store is not None and not self._closed:
                store.accepted(server, item)
            if self._queued < self.queue_size and not self._closed:
                self._queued += 1
                if rec.missed:
                    rec.missed = False
                    self._missed.pop(server, None)
                held = rec.held
                if held is None:
                    rec.held = deque((item,))
                else:
                    held.append(item)
                if rec.busy is None and not rec.ready:
                    rec.ready = True
                    self._ready.append(server)
                    if self._sleepers:
                        self._work.notify()
                return None
            reason = "closed" if self._closed else "queue_full"
            if reason == "queue_full" and self.resync and not rec.missed:
                rec.missed = True
                self._missed[server] = None
            return reason, counts.drop(reason)
        finally:
            lock.release()

    def admit_billing(self, item: Item) -> Optional[tuple[str, int]]:
        """Count billing *item* and queue it (its own bound); never touches a server's record."""
        with self._lock:
            self.counts.submitted += 1
            if self._billing_pending < self.billing_size and not self._closed:
                self._billing_pending += 1
                self._billing.append(item)
                if self._sleepers:
                    self._work.notify()
                return None
            reason = "closed" if self._closed else BILLING_FULL
            return reason, self.counts.drop(reason)

    def _trim(self, *, past_busy: bool = False) -> None:
        """
        Forget the least recently updated servers beyond ``max_servers`` (under the lock).

        By default it stops at the first that has something pending: that one is
        forgotten once settled (settle() trims again), so the ones forgotten are
        the oldest, at a cost that does not grow with what is pending (admit()
        and settle() call it). With *past_busy* (a resync, a reload: once per
        health check at most) it looks past pending servers among the oldest
        and forgets the idle ones, so that a server beyond the bound is never
        re-sent while an older one is still in flight (that one goes as it settles).
        """
        records = self._records
        excess = len(records) - self.max_servers
        if excess <= 0:
            return
        forget = []
        for server, rec in itertools.islice(records.items(), excess):  # the oldest, in order
            if rec.idle():
                forget.append(server)
            elif not past_busy:
                break
        for server in forget:
            del records[server]
            self._missed.pop(server, None)

    def seed(self, item: Item) -> None:
        """Remember *item* (from the state file) as its server's latest, missed by the remote."""
        with self._lock:
            rec = self._records.pop(item.server, None) or _Record(item)
            rec.latest = item
            self._records[item.server] = rec
            if self.resync:
                rec.missed = True
                self._missed[item.server] = None
            while len(self._records) > self.max_servers:
                server = next(iter(self._records))
                del self._records[server]
                self._missed.pop(server, None)

    def event_id(self, item: Item) -> str:
        """*item*'s event id, made on first need (the state writer asks from its thread)."""
        with self._lock:
            if item.event_id is None:
                item.event_id = new_event_id()
            return item.event_id
