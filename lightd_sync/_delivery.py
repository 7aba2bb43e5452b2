"""
Delivery: what a lane thread does with one update, from the first attempt to its outcome.

The :class:`Deliverer` asks the :class:`~lightd_sync._policy.DeliveryPolicy`
what follows each failure, sends through the :class:`TransportSlot`, counts
the outcome in the :class:`Ledger`, tells the :class:`ResyncBook`, logs, and
calls the daemon's ``on_outcome`` hook: always outside every lock.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from ._book import ResyncBook
from ._exceptions import DeliveryError
from ._forksafe import after_fork_in_child
from ._ledger import DELIVERED, DROPPED, FAILED, SUPERSEDED, Ledger, Settled
from ._logutil import Throttle, get_logger, safe_log
from ._model import Outcome, Update
from ._pending import Pending
from ._policy import DeliveryPolicy, bounded, testing_mode, wait_for
from ._secrets import scrub
from ._slot import TransportSlot

if TYPE_CHECKING:
    from ._state import StateStore

__all__ = ["Deliverer", "OutcomeHook", "RemotePause", "log_extra"]

log = get_logger("engine")

#: The daemon's ``on_outcome`` callback.
OutcomeHook = Callable[[Outcome], None]


def log_extra(item: Pending, http_status: Optional[int] = None) -> dict[str, Any]:
    """The ``extra`` fields of every log record about *item* (for JSON log formatters)."""
    extra: dict[str, Any] = {
        "lightd_server": item.server,
        "lightd_status": item.status.value,
        "lightd_event_id": item.event_id,
    }
    if http_status is not None:
        extra["lightd_http_status"] = http_status
    return extra


def _no_hand_off() -> None:
    """What a delivery outside a lane's turn calls before a wait: nothing."""


class RemotePause:
    """The remote's ``Retry-After``: until when no lane sends (shared across reloads)."""

    def __init__(self) -> None:
        # Guards _until: the time.monotonic() before which nothing is sent.
        self._lock = threading.Lock()
        self._until = 0.0
        after_fork_in_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def extend(self, seconds: float) -> None:
        """Send nothing for *seconds* (a pause already in force is never shortened)."""
        until = time.monotonic() + bounded(seconds)
        with self._lock:
            self._until = max(self._until, until)

    def left(self) -> float:
        """Seconds left (0 in testing mode)."""
        if testing_mode():
            return 0.0
        with self._lock:
            return max(0.0, self._until - time.monotonic())


class Deliverer:
    """
    The job of every lane thread.

    Args:
        ledger: Counts outcomes.
        book: Knows each server's latest update and what the remote missed.
        slot: The transport to send through.
        policy: The delivery policy (replaced by :meth:`SyncEngine.reload`).
        on_missed: Called when an update is remembered for a re-send (the
            engine then checks health early).
        on_outcome: The daemon's hook, if any.
        after_batch: Called in the lane thread after each batch.
    """

    def __init__(
        self,
        ledger: Ledger,
        book: ResyncBook,
        slot: TransportSlot,
        policy: DeliveryPolicy,
        *,
        on_missed: Callable[[], None],
        on_outcome: Optional[OutcomeHook] = None,
        after_batch: Optional[Callable[[], None]] = None,
    ) -> None:
        self.ledger = ledger
        self.book = book
        self.slot = slot
        self.policy = policy  # a frozen value: swapped whole, read once per decision
        #: The state file's store, told of every acknowledged update.
        self.store: Optional[StateStore] = None
        #: The token, to scrub from what a transport's bug says (swapped on reload).
        self.secret: Optional[str] = None
        self.pause = RemotePause()
        #: Set when close() runs out of time: what is left fails at once.
        self.abort = threading.Event()
        self._on_missed = on_missed
        self._on_outcome = on_outcome
        self._after_batch = after_batch
        # Guards the two throttles below (any lane may log).
        self._log_lock = threading.Lock()
        self._hook_log = Throttle()
        self._pause_log = Throttle()
        after_fork_in_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._log_lock = threading.Lock()

    # -- the lane's loop ---------------------------------------------------

    def deliver_batch(
        self, items: list[Pending], hand_off: Callable[[], None] = _no_hand_off
    ) -> None:
        """
        Send what a lane took at once (a lane thread): first attempts together, then each alone.

        The first attempt of every item goes out in one ``send_many`` (the HTTP
        transport pipelines them); an item that failed goes on alone with its
        retries. The items are of different servers, so no order is at stake.
        *hand_off* is called before any wait (a back-off, the remote's pause),
        so that another lane thread takes the next batch meanwhile.
        """
        try:
            if len(items) == 1:
                self.deliver(items[0], hand_off=hand_off)
            else:
                self._deliver_together(items, hand_off)
        finally:
            if self._after_batch is not None:
                self._after_batch()

    def _deliver_together(self, items: list[Pending], hand_off: Callable[[], None]) -> None:
        if not self._wait_for_pause(hand_off):
            for item in items:
                self._settle(item, FAILED, "closed")
            return
        updates = [item.update() for item in items]
        for item in items:
            item.attempts += 1
            self._log_attempt(item)
        started = time.perf_counter()
        errors = self._send_many(updates)
        seconds = time.perf_counter() - started
        for item, update, error in zip(items, updates, errors):
            if error is None:
                self._settle(item, DELIVERED, None, seconds)
            else:
                self.deliver(item, update, error, hand_off=hand_off)

    def _wait_for_pause(self, hand_off: Callable[[], None]) -> bool:
        """Wait out the remote's ``Retry-After`` pause; False if close() ran out of time first."""
        while not self.abort.is_set():
            wait = self.pause.left()
            if wait <= 0:
                return True
            hand_off()
            wait_for(self.abort, wait)  # then re-read: the pause may have grown
        return False

    def deliver(
        self,
        item: Pending,
        update: Optional[Update] = None,
        error: Optional[DeliveryError] = None,
        *,
        hand_off: Callable[[], None] = _no_hand_off,
    ) -> None:
        """
        Send *item* until it is delivered, given up on or superseded (a lane thread).

        With *error*, its first attempt (of *update*) was already made and failed.
        *hand_off* is called before any wait.
        """
        attempt = 0
        while True:
            if error is None:
                if not self._wait_for_pause(hand_off):
                    self._settle(item, FAILED, "closed")
                    return
                if attempt and self.ledger.superseded(item):
                    self._settle(item, SUPERSEDED, SUPERSEDED)
                    return
                if update is None:
                    update = item.update()
                item.attempts += 1
                self._log_attempt(item)
                started = time.perf_counter()
                error = self._send(update)
                if error is None:
                    self._settle(item, DELIVERED, None, time.perf_counter() - started)
                    return
            policy = self.policy
            decision = policy.after_failure(error, attempt)
            if decision.pause:
                self.pause.extend(decision.pause)
                if decision.asked is not None:
                    self._log_capped(item, decision.asked, policy.max_retry_after)
            if decision.retry:
                attempt += 1
                if log.isEnabledFor(logging.DEBUG):
                    safe_log(
                        log,
                        logging.DEBUG,
                        "retrying %s in %.3f s: %s",
                        item.server,
                        decision.delay,
                        error.message,
                        extra=log_extra(item, error.status),
                    )
                hand_off()
                wait_for(self.abort, decision.delay)
                error = None
                continue
            self._settle(item, FAILED, error.reason, error=error, resync=decision.resync)
            return

    def _log_attempt(self, item: Pending) -> None:
        if log.isEnabledFor(logging.DEBUG):
            safe_log(
                log,
                logging.DEBUG,
                "sending %s (%s), attempt %d, event id %s",
                item.server,
                item.status.value,
                item.attempts,
                item.event_id,
                extra=log_extra(item),
            )

    def _send_many(self, updates: list[Update]) -> list[Optional[DeliveryError]]:
        transport = self.slot.acquire()
        try:
            results = transport.send_many(updates)
            if len(results) != len(updates):
                raise ValueError(f"send_many returned {len(results)} results for {len(updates)}")
        except DeliveryError as exc:
            return [exc] * len(updates)
        except Exception as exc:  # a bug in a transport must not kill the lane
            said = scrub(f"the transport {transport!r} raised {exc!r}", self.secret)
            return [DeliveryError(said)] * len(updates)
        finally:
            self.slot.release(transport)
        return list(results)

    def _send(self, update: Any) -> Optional[DeliveryError]:
        transport = self.slot.acquire()
        try:
            transport.send(update)
        except DeliveryError as exc:
            return exc
        except Exception as exc:  # a bug in a transport must not kill the lane
            said = scrub(f"the transport {transport!r} raised {exc!r}", self.secret)
            return DeliveryError(said)
        finally:
            self.slot.release(transport)
        return None

    # -- outcomes ------------------------------------------------------------

    def _settle(
        self,
        item: Pending,
        result: str,
        reason: Optional[str],
        seconds: float = 0.0,
        *,
        error: Optional[DeliveryError] = None,
        resync: bool = False,
    ) -> None:
        settled = self.ledger.settle(item, result, reason, seconds)
        if settled is None:
            return  # close() already counted it
        if result == DELIVERED:
            self.book.acknowledged(item)
            store = self.store
            if store is not None and item.event_id is not None:
                store.acknowledged(item.server, item.event_id)
        elif result == FAILED and resync and self.book.missed(item):
            self._on_missed()
        self._log_outcome(item, settled, error)
        self.notify(item, result, reason)

    def _log_outcome(self, item: Pending, settled: Settled, error: Optional[DeliveryError]) -> None:
        if settled.recovered:
            safe_log(
                log,
                logging.ERROR,
                "%d more updates failed before delivery recovered",
                settled.recovered,
            )
        if error is None:
            return
        extra = log_extra(item, error.status)
        what = f"update of {item.server} ({item.status.value}) failed: {error.message}"
        if settled.first:
            safe_log(log, logging.ERROR, "%s", what, extra=extra)
        elif settled.due:
            safe_log(
                log,
                logging.ERROR,
                "%d more updates failed; last: %s",
                settled.due,
                what,
                extra=extra,
            )

    def _log_capped(self, item: Pending, asked: float, cap: float) -> None:
        with self._log_lock:
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

    def notify(self, item: Pending, result: str, reason: Optional[str]) -> None:
        """Tell the daemon's ``on_outcome`` hook how *item* ended (never under a lock)."""
        hook = self._on_outcome
        if hook is None:
            return
        latency = None if result == DROPPED else time.monotonic() - item.accepted_at
        outcome = Outcome(
            update=item.update(),
            result=result,
            reason=reason,
            attempts=item.attempts,
            latency=latency,
        )
        try:
            hook(outcome)
        except Exception as exc:
            with self._log_lock:
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
