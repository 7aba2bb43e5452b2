"""
The counters: every outcome by result and reason, the latency histogram, the log throttles.

:class:`Counts` has no lock of its own: it belongs to the
:class:`~.outbox.Outbox`, and every method is called with the outbox lock
held (except :meth:`Counts.snapshot` from a signal handler, which is built to
balance without it).
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Optional

from .._logutil import Throttle
from .._model import LATENCY_BUCKETS, LatencyHistogram, SyncStats

__all__ = ["DELIVERED", "DROPPED", "FAILED", "SUPERSEDED", "Counts", "Settled"]

DELIVERED, FAILED, DROPPED, SUPERSEDED = "delivered", "failed", "dropped", "superseded"


class Settled:
    """What counting an outcome tells the worker to log and do."""

    __slots__ = ("due", "first", "missed", "recovered")

    def __init__(self) -> None:
        self.first = False  #: the first failure after deliveries went well: log it
        self.due = 0  #: failures summed up since the last failure log line, if one is due
        self.recovered = 0  #: failures not logged before deliveries recovered
        self.missed = False  #: the update is now remembered for a re-send: check health soon


class Counts:
    """Every counter of :class:`~lightd_sync.SyncStats`, the reasons, the latency, the throttles."""

    def __init__(self) -> None:
        self.submitted = self.delivered = self.failed = 0
        self.dropped = self.superseded = self.resynced = 0
        self.reasons: Counter[tuple[str, str]] = Counter()  # (result, reason) -> updates
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_total = 0.0
        self.drop_log = Throttle()
        self.fail_log = Throttle()
        self.failing = False  # the last outcome was a failure: later ones are summed up

    def drop(self, reason: str) -> int:
        """Count one drop (already counted as submitted); return how many to log now (0: none)."""
        self.dropped += 1
        self.reasons[DROPPED, reason] += 1
        return self.drop_log.hit() or 0

    def outcome(self, result: str, reason: Optional[str], seconds: float) -> Settled:
        """Count one outcome of a pending item."""
        settled = Settled()
        if result == DELIVERED:
            self.delivered += 1
            self.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.latency_total += seconds
            if self.failing:
                self.failing = False
                settled.recovered = self.fail_log.take()
        elif result == SUPERSEDED:
            self.superseded += 1
            self.reasons[SUPERSEDED, SUPERSEDED] += 1
        else:
            self.failed += 1
            self.reasons[FAILED, reason or "unreachable"] += 1
            if not self.failing:
                self.failing = settled.first = True
                self.fail_log.restart()
            else:
                settled.due = self.fail_log.hit() or 0
        return settled

    def fail_left(self, left: int) -> tuple[int, int]:
        """Count *left* pending items failed (``closed``); return the unlogged drops, failures."""
        self.failed += left
        if left:
            self.reasons[FAILED, "closed"] += left
        return self.drop_log.take(), self.fail_log.take()

    def snapshot(self) -> SyncStats:
        """
        The counters as :class:`~lightd_sync.SyncStats`; balanced even without the lock.

        ``pending`` is derived (submitted minus settled), so the snapshot
        balances by construction; the outcomes are read before ``submitted``,
        so nothing is negative when other threads count meanwhile.
        """
        delivered, failed = self.delivered, self.failed
        dropped, superseded, resynced = self.dropped, self.superseded, self.resynced
        submitted = self.submitted
        settled = delivered + failed + dropped + superseded
        return SyncStats(
            submitted=max(submitted, settled),
            delivered=delivered,
            failed=failed,
            dropped=dropped,
            pending=max(0, submitted - settled),
            superseded=superseded,
            resynced=resynced,
        )

    def histogram(self) -> LatencyHistogram:
        """How long successful deliveries took."""
        counts = tuple(self.latency)
        return LatencyHistogram(counts=counts, total=self.latency_total, count=sum(counts))
