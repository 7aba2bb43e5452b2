"""
The workers: a plain bounded pool of ``lightd-sync-worker-N`` threads.

Each worker loops: take what is ready from the :class:`~.outbox.Outbox` (a
batch of different servers when the transport takes batches, one event
otherwise), send it, and settle each outcome in the outbox. A failure that a
retry may fix goes back to the outbox with its backoff as a timer: no worker
sleeps through a backoff or a ``Retry-After`` pause. The daemon's
``on_outcome`` hook and the log lines come after the outbox lock is released.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

from .._exceptions import DeliveryError
from .._logutil import Throttle, get_logger, safe_log
from .._model import Event, Outcome
from .._secrets import scrub
from .._threads import start_quietly
from .item import Item
from .outbox import DELIVERED, DROPPED, FAILED, MAX_BATCH, SUPERSEDED, Outbox, Settled
from .policy import DeliveryPolicy
from .slot import TransportSlot

__all__ = ["OutcomeHook", "Pool", "Reporter", "log_extra"]

log = get_logger("engine")

#: The daemon's ``on_outcome`` callback.
OutcomeHook = Callable[[Outcome], None]


def log_extra(item: Item, http_status: Optional[int] = None) -> dict[str, Any]:
    """The ``extra`` fields of every log record about *item* (for JSON log formatters)."""
    extra: dict[str, Any] = {
        "lightd_server": item.server,
        "lightd_status": "billing" if item.billing is not None else item.status.value,
        "lightd_event_id": item.event_id,
    }
    if http_status is not None:
        extra["lightd_http_status"] = http_status
    return extra


class Reporter:
    """Tells the daemon how items ended: its ``on_outcome`` hook and the log (no lock held)."""

    def __init__(self, outbox: Outbox, on_outcome: Optional[OutcomeHook]) -> None:
        self._outbox = outbox
        self._on_outcome = on_outcome
        # Guards the two throttles (any worker may log).
        self._lock = threading.Lock()
        self._hook_log = Throttle()
        self._pause_log = Throttle()

    def notify(self, item: Item, result: str, reason: Optional[str]) -> None:
        """Call the daemon's ``on_outcome`` hook for *item*, if it has one."""
        hook = self._on_outcome
        if hook is None:
            return
        if item.event_id is None:
            self._outbox.event_id(item)
        latency = None if result == DROPPED else time.monotonic() - item.accepted_at
        outcome = Outcome(
            update=item.event(),
            result=result,
            reason=reason,
            attempts=item.attempts,
            latency=latency,
        )
        try:
            hook(outcome)
        except Exception as exc:
            with self._lock:
                due = self._hook_log.hit()
            if due is not None:
                safe_log(
                    log,
                    logging.ERROR,
                    "on_outcome raised %s: %s (%d time(s); logged at most once per %g s)",
                    type(exc).__name__,
                    exc,
                    due,
                    self._hook_log.window,
                )

    def failed(self, item: Item, settled: Settled, error: Optional[DeliveryError]) -> None:
        """Log a failure (the first of a streak, then summed up) or the end of a streak."""
        if settled.recovered:
            safe_log(
                log, logging.ERROR, "%d more updates failed before delivery recovered",
                settled.recovered,
            )  # fmt: skip
        if error is None:
            return
        what_ = "billing event" if item.billing is not None else item.status.value
        what = f"update of {item.server} ({what_}) failed: {error.message}"
        extra = log_extra(item, error.status)
        if settled.first:
            safe_log(log, logging.ERROR, "%s", what, extra=extra)
        elif settled.due:
            safe_log(
                log, logging.ERROR, "%d more updates failed; last: %s", settled.due, what,
                extra=extra,
            )  # fmt: skip

    def capped(self, item: Item, asked: float, cap: float) -> None:
        """Log (throttled) that the remote asked for a longer pause than the cap."""
        with self._lock:
            due = self._pause_log.hit()
        if due is not None:
            safe_log(
                log,
                logging.WARNING,
                "the remote asked to wait %.0f s (Retry-After); waiting remote.max_retry_after "
                "= %g s instead",
                asked,
                cap,
                extra=log_extra(item),
            )


class Pool:
    """
    The worker threads, and what each does with a batch.

    Args:
        outbox: Where work comes from and outcomes go.
        slot: The transport to send through (swapped on reload).
        reporter: Tells the daemon how items ended.
        policy: The delivery policy (a frozen value, swapped whole on reload).
        on_missed: Called when an update is remembered for a re-send (health is checked soon).
        between: Called by a worker between two batches (admits what signal handlers deferred).
    """

    def __init__(
        self,
        outbox: Outbox,
        slot: TransportSlot,
        reporter: Reporter,
        policy: DeliveryPolicy,
        *,
        on_missed: Callable[[], None],
        between: Callable[[], None],
    ) -> None:
        self.outbox = outbox
        self.slot = slot
        self.reporter = reporter
        self.policy = policy
        #: The token, to scrub from what a transport's bug says (swapped on reload).
        self.secret: Optional[str] = None
        self._on_missed = on_missed
        self._between = between
        # Guards _threads, _size and _made (start, resize and join may race).
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []  # started, maybe asked to end
        self._size = 0  # workers that run and are not asked to end
        self._made = 0  # workers made so far: the N of the next lightd-sync-worker-N

    # -- the threads ---------------------------------------------------------------

    def resize(self, count: int) -> None:
        """Run *count* workers: start more, or ask the surplus to end after their batch."""
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive() or t.ident is None]
            more = self.outbox.retire(self._size - count)  # < 0: cancels retirements first
            self._size = count
            new = []
            for _ in range(more):
                thread = threading.Thread(
                    target=self._run, name=f"lightd-sync-worker-{self._made}", daemon=True
                )
                self._made += 1
                new.append(thread)
            self._threads.extend(new)
        for thread in new:
            start_quietly(thread)  # RuntimeError at interpreter shutdown: the engine handles it

    def join(self, deadline: float) -> bool:
        """Wait until *deadline* (``time.monotonic()``) for every worker to end."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            if thread.ident is not None:
                thread.join(max(0.0, min(deadline - time.monotonic(), threading.TIMEOUT_MAX)))
        return not any(t.is_alive() for t in threads)

    def _run(self) -> None:
        outbox = self.outbox
        while True:
            transport = self.slot.current
            try:
                limit = min(max(int(transport.max_batch()), 1), MAX_BATCH)
            except Exception:
                limit = 1
            work = outbox.take(limit)
            if work is None:
                return
            batch, superseded = work
            for item in superseded:
                self.reporter.notify(item, SUPERSEDED, SUPERSEDED)
            if batch:
                self.deliver(batch)
            self._between()

    # -- one batch -------------------------------------------------------------------

    def deliver(self, batch: list[Item]) -> None:
        """Send *batch* (one request per event, or one batch); settle or schedule each."""
        events = [item.event() for item in batch]
        for item in batch:
            item.attempts += 1
            if log.isEnabledFor(logging.DEBUG):
                safe_log(
                    log, logging.DEBUG, "sending %s, attempt %d, event id %s",
                    item.server, item.attempts, item.event_id, extra=log_extra(item),
                )  # fmt: skip
        started = time.perf_counter()
        errors = self._send(events)
        seconds = time.perf_counter() - started
        policy = self.policy
        for item, error in zip(batch, errors):
            if error is None:
                self._settle(item, DELIVERED, None, seconds)
                continue
            decision = policy.after_failure(error, item.attempts - 1)
            if decision.pause:
                self.outbox.pause(decision.pause)
                if decision.asked is not None:
                    self.reporter.capped(item, decision.asked, policy.max_retry_after)
            if decision.retry:
                if log.isEnabledFor(logging.DEBUG):
                    safe_log(
                        log, logging.DEBUG, "retrying %s in %.3f s: %s",
                        item.server, decision.delay, error.message,
                        extra=log_extra(item, error.status),
                    )  # fmt: skip
                self.outbox.retry_later(item, decision.delay)
                continue
            resync = decision.resync and item.billing is None
            self._settle(item, FAILED, error.reason, 0.0, error=error, resync=resync)

    def _settle(
        self,
        item: Item,
        result: str,
        reason: Optional[str],
        seconds: float,
        *,
        error: Optional[DeliveryError] = None,
        resync: bool = False,
    ) -> None:
        settled = self.outbox.settle(item, result, reason, seconds, resync)
        if settled is None:
            return  # close() already counted it
        if settled.missed:
            self._on_missed()
        if settled.recovered or error is not None:
            self.reporter.failed(item, settled, error)
        self.reporter.notify(item, result, reason)

    def _send(self, events: list[Event]) -> list[Optional[DeliveryError]]:
        transport = self.slot.acquire()
        try:
            if len(events) == 1:
                try:
                    transport.send(events[0])
                except DeliveryError as exc:
                    return [exc]
                return [None]
            results = list(transport.send_many(events))
            if len(results) != len(events):
                raise ValueError(f"send_many returned {len(results)} results for {len(events)}")
            return results
        except DeliveryError as exc:
            return [exc] * len(events)
        except Exception as exc:  # a bug in a transport must not kill the worker
            said = scrub(f"the transport {transport!r} raised {exc!r}", self.secret)
            return [DeliveryError(said)] * len(events)
        finally:
            self.slot.release(transport)
