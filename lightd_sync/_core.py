"""
The engine's state and what its threads do with it: delivery, accounting, resync.

:class:`EngineCore` holds everything the lane and health threads share with
the daemon's threads. :class:`~lightd_sync.SyncEngine` adds the public API and
the lifecycle (start, close, reload, fork) on top of it.

An *item* is the list ``[server, status, data, event_id, queued]`` created
once per submission; the same list object is queued, retried and re-sent by
resync, so identity (``is``) says whether it is still a server's latest
update. ``queued`` is False for an update that was dropped.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Optional

from ._config import RemoteConfig
from ._exceptions import DeliveryError
from ._health import HealthMonitor, HealthTracker
from ._ids import new_event_id
from ._lanes import Lane
from ._logutil import Throttle, get_logger, safe_log
from ._model import LATENCY_BUCKETS, LatencyHistogram, Update
from ._retry import BACKOFF_BASE, BACKOFF_CAP, backoff_delay, resync_worthy
from ._transports.base import Transport

__all__ = ["EngineCore"]

log = get_logger("engine")

_DELIVERED, _FAILED, _SUPERSEDED = 0, 1, 2
#: First delay of the quicker health checks that follow failed deliveries.
PROBE_DELAY = 0.25


def close_quietly(transport: Transport) -> None:
    """Close *transport*, logging (not raising) what it raises."""
    try:
        transport.close()
    except Exception as exc:
        safe_log(log, logging.WARNING, "closing the transport %r raised %r", transport, exc)


class EngineCore:
    """State shared by the daemon's threads, the lanes and the health timer."""

    #: Seconds before the first retry at most (full jitter); tests may lower it.
    backoff_base = BACKOFF_BASE
    #: The longest wait between two attempts.
    backoff_cap = BACKOFF_CAP

    def _init_state(self, config: RemoteConfig, transport: Transport) -> None:
        self._config = config
        self._transport = transport
        # _lock guards every field below that is not a threading primitive:
        # the counters, the lanes list and every put on a lane (so nothing
        # lands behind a lane's STOP), _latest, _unacked and the _closed/_final
        # flags. Reentrant: close() may run in a signal handler that
        # interrupted update() in the same thread.
        self._lock = threading.RLock()
        # _tlock guards which transport is current (_transport), who uses one
        # now (_users) and the ones a reload replaced (_retired). Its own lock,
        # so that a delivery takes _lock once (to settle), not three times:
        # update() never waits behind a lane's bookkeeping. Taken after _lock,
        # never before it; reentrant for the same reason as _lock.
        self._tlock = threading.RLock()
        self._idle = threading.Condition(self._lock)  # notified when pending hits 0
        self._flush_waiters = 0
        self._submitted = self._delivered = self._failed = self._dropped = 0
        self._superseded = self._resynced = self._pending = 0
        self._queue_size = config.queue_size
        self._max_servers = config.max_servers  # read on the hot path: no attribute chain
        self._closed = False  # no new updates
        self._final = False  # counters are final; late outcomes are ignored
        self._abort = threading.Event()  # close() ran out of time: fail what is left
        self._drop_log = Throttle()
        self._fail_log = Throttle()
        self._fail_streak = False
        self._lanes: list[Lane] = []
        self._nlanes = 0
        self._generation = 0
        self._latest: OrderedDict[str, list[Any]] = OrderedDict()  # server -> its latest item
        self._unacked: OrderedDict[str, list[Any]] = OrderedDict()  # latest items that failed
        self._users: dict[int, int] = {}  # id(transport) -> sends or checks using it now
        self._retired: list[Transport] = []  # replaced by a reload; closed once unused
        self._health = HealthTracker(self._check_transport, on_healthy=self._on_healthy)
        self._monitor: Optional[HealthMonitor] = None
        self._probe_delay = PROBE_DELAY
        self._latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_total = 0.0

    # -- lanes ---------------------------------------------------------------

    def _new_lanes(self, count: int, gate: Optional[threading.Event]) -> list[Lane]:
        gen = self._generation
        self._generation += 1
        suffix = "" if gen == 0 else f"-g{gen}"
        return [Lane(f"lightd-sync-lane-{i}{suffix}", self._deliver, gate) for i in range(count)]

    def _enqueue_locked(self, item: list[Any], *, resync: bool = False) -> bool:
        """Count and queue *item*, or count it as dropped. Call with _lock held."""
        self._submitted += 1
        if resync:
            self._resynced += 1
        server = item[0]
        latest = self._latest
        latest[server] = item
        latest.move_to_end(server)
        if len(latest) > self._max_servers:
            latest.popitem(last=False)
        if not self._closed and self._pending < self._queue_size:
            self._pending += 1
            self._lanes[hash(server) % self._nlanes].put(item)
            return True
        item[4] = False
        self._dropped += 1
        if self._config.resync and not self._closed:
            self._remember_unacked(item)
        return False

    def _remember_unacked(self, item: list[Any]) -> None:
        unacked = self._unacked
        unacked[item[0]] = item
        unacked.move_to_end(item[0])
        if len(unacked) > self._config.max_servers:
            unacked.popitem(last=False)

    # -- transports in use -------------------------------------------------

    def _acquire(self) -> Transport:
        with self._tlock:
            transport = self._transport
            key = id(transport)
            self._users[key] = self._users.get(key, 0) + 1
            return transport

    def _release(self, transport: Transport) -> None:
        with self._tlock:
            key = id(transport)
            left = self._users[key] - 1
            if left:
                self._users[key] = left
            else:
                del self._users[key]
            idle = [t for t in self._retired if id(t) not in self._users]
            if idle:
                self._retired = [t for t in self._retired if id(t) in self._users]
        for retired in idle:
            close_quietly(retired)

    # -- delivery (lane threads) ---------------------------------------------

    def _deliver(self, item: list[Any], lane: Lane) -> None:
        server = item[0]
        update: Optional[Update] = None
        attempt = 0
        while True:
            if self._abort.is_set():
                self._settle(item, _FAILED, None)
                return
            wait = lane.not_before - time.monotonic()
            if wait > 0 and self._abort.wait(wait):
                continue
            newer = self._latest.get(server, item)
            if attempt and newer is not item and newer[4]:  # a newer one is queued behind
                self._settle(item, _SUPERSEDED, None)
                return
            if update is None:
                if item[3] is None:
                    item[3] = new_event_id()
                update = Update(server, item[1], item[2], event_id=item[3])
            started = time.perf_counter()
            error = self._send(update)
            if error is None:
                self._settle(item, _DELIVERED, None, time.perf_counter() - started)
                return
            if error.retry_after:
                lane.not_before = time.monotonic() + error.retry_after
            if error.retryable and attempt < self._config.retries:
                attempt += 1
                delay = backoff_delay(
                    attempt,
                    base=self.backoff_base,
                    cap=self.backoff_cap,
                    retry_after=error.retry_after,
                )
                self._abort.wait(delay)
                continue
            self._settle(item, _FAILED, error)
            return

    def _send(self, update: Update) -> Optional[DeliveryError]:
        transport = self._acquire()
        try:
            transport.send(update)
        except DeliveryError as exc:
            return exc
        except Exception as exc:  # a bug in a transport must not kill the lane
            return DeliveryError(f"the transport {transport!r} raised {exc!r}")
        finally:
            self._release(transport)
        return None

    def _settle(
        self,
        item: list[Any],
        outcome: int,
        error: Optional[DeliveryError],
        seconds: float = 0.0,
    ) -> None:
        """Count one outcome; log failures without flooding."""
        server = item[0]
        first = poke = False
        due: Optional[int] = None
        held = 0
        with self._lock:
            if self._final:
                return
            self._pending -= 1
            is_latest = self._latest.get(server) is item
            if outcome == _DELIVERED:
                self._delivered += 1
                self._latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
                self._latency_total += seconds
                if is_latest:
                    self._unacked.pop(server, None)
                if self._fail_streak:  # report what the window held back
                    self._fail_streak = False
                    held = self._fail_log.take()
            elif outcome == _SUPERSEDED:
                self._superseded += 1
            else:
                self._failed += 1
                if error is not None:
                    if is_latest and self._config.resync and resync_worthy(error):
                        self._remember_unacked(item)
                        poke = True
                    if not self._fail_streak:
                        self._fail_streak = first = True
                        self._fail_log.restart()
                    else:
                        due = self._fail_log.hit()
            if self._pending == 0 and self._flush_waiters:
                self._idle.notify_all()
            monitor = self._monitor
        if poke and monitor is not None:
            # Check health soon (sooner than the interval), backing off while it fails.
            monitor.poke(self._probe_delay)
            self._probe_delay = min(self._probe_delay * 2, self._config.health_interval)
        if error is None:
            if held:
                safe_log(
                    log, logging.ERROR, "%d more updates failed before delivery recovered", held
                )
            return
        reason = f"update of {server} ({item[1].value}) failed: {error.message}"
        if first:
            safe_log(log, logging.ERROR, "%s", reason)
        elif due:
            safe_log(log, logging.ERROR, "%d more updates failed; last: %s", due, reason)

    def latency_histogram(self) -> LatencyHistogram:
        """
        Return how long successful deliveries took, as a histogram.

        .. versionadded:: 0.1.0
        """
        with self._lock:
            counts = tuple(self._latency_counts)
            return LatencyHistogram(counts=counts, total=self._latency_total, count=sum(counts))

    # -- health and resync (health thread) --------------------------------

    def _check_transport(self) -> None:
        transport = self._acquire()
        try:
            transport.check_health()
        finally:
            self._release(transport)
        # (a failed check raises through; HealthTracker records it)

    def _on_healthy(self) -> None:
        """
        After every healthy check: re-send what the remote missed, if anything.

        Only as many as the queue has room for; the rest wait for the next
        healthy check, so a resync never drops anything itself.
        """
        self._probe_delay = PROBE_DELAY
        if not self._unacked:
            return
        with self._lock:
            if self._closed or not self._lanes:
                return
            room = self._queue_size - self._pending
            items: list[list[Any]] = []
            for server in list(self._unacked)[: max(0, room)]:
                item = self._unacked.pop(server)
                if self._latest.get(server) is item:
                    items.append(item)
            for item in items:
                self._enqueue_locked(item, resync=True)
            left = len(self._unacked)
        if items:
            safe_log(
                log,
                logging.INFO,
                "re-sending the latest status of %d servers the remote missed (%d more wait)",
                len(items),
                left,
            )
