"""Health: checking the remote now, and every ``health_interval`` seconds on a timer thread."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from .._exceptions import DeliveryError
from .._logutil import get_logger, safe_log
from .._model import HealthState
from .._secrets import scrub
from .._threads import start_quietly
from .policy import bounded, testing_mode

__all__ = ["HealthMonitor", "HealthTracker"]

log = get_logger("health")


class HealthTracker:
    """
    Run health checks and keep the latest :class:`HealthState`.

    A change of health is logged once (unhealthy at ERROR with the reason,
    recovered at INFO), not every failed check.

    Args:
        check: Returns if healthy, raises :class:`DeliveryError` if not.
        on_healthy: Called (outside any lock) after every check that found
            the remote healthy; the engine re-sends what the remote missed.
    """

    def __init__(
        self,
        check: Callable[[], None],
        on_healthy: Optional[Callable[[], None]] = None,
    ) -> None:
        self.check_fn = check
        self._on_healthy = on_healthy
        #: The token, to scrub from what a transport's bug says.
        self.secret: Optional[str] = None
        # Guards _state: checks may run in the timer thread and a caller at once.
        # Reentrant: check_health() may run in a signal handler that interrupted
        # check_health() in the main thread.
        self._lock = threading.RLock()
        self._state = HealthState()

    @property
    def state(self) -> HealthState:
        """The latest state (``healthy`` is None before the first check)."""
        return self._state

    def check(self) -> HealthState:
        """Check the remote now (network I/O in the calling thread) and return the new state."""
        started = time.monotonic()
        error: Optional[str] = None
        try:
            self.check_fn()
        except DeliveryError as exc:
            error = exc.message
        except Exception as exc:  # a transport bug must not kill the timer thread
            error = scrub(f"the transport's health check raised {exc!r}", self.secret)
        latency = time.monotonic() - started
        with self._lock:
            before = self._state
            self._state = HealthState(
                healthy=error is None,
                checked_at=time.time(),
                latency=latency,
                consecutive_failures=0 if error is None else before.consecutive_failures + 1,
                error=error,
            )
            after = self._state
        self._report(before, after)
        if after.healthy and self._on_healthy is not None:
            self._on_healthy()
        return after

    def _report(self, before: HealthState, after: HealthState) -> None:
        if after.healthy and before.healthy is False:
            safe_log(
                log,
                logging.INFO,
                "the remote is healthy again after %d failed checks",
                before.consecutive_failures,
            )
        elif after.healthy and before.healthy is None:
            latency_ms = (after.latency or 0.0) * 1000
            safe_log(log, logging.INFO, "the remote is healthy (%.0f ms)", latency_ms)
        elif not after.healthy and before.healthy is not False:
            safe_log(log, logging.ERROR, "the remote is unhealthy: %s", after.error)

    def reset(self) -> None:
        """Forget the state (a new remote, or a forked child)."""
        with self._lock:
            self._state = HealthState()


class HealthMonitor:
    """
    The timer thread: a check right after start, then every :attr:`interval` seconds.

    :meth:`probe` asks for an earlier check (the engine does so when
    deliveries fail, so that an outage shorter than the interval is still
    noticed and what it lost is re-sent); probes back off (0.25 s, 0.5 s, ...
    up to the interval) until a check finds the remote healthy. :meth:`stop`
    wakes the thread at once; a check in progress ends when the transport is
    closed.
    """

    #: The first delay of the early checks that follow failed deliveries.
    PROBE_DELAY = 0.25

    def __init__(self, tracker: HealthTracker, interval: float) -> None:
        self._tracker = tracker
        self.interval = interval
        # Guards _due (when the next check is due, time.monotonic()) and
        # _probe_delay (how soon the next probe checks).
        self._lock = threading.Lock()
        self._due = 0.0
        self._probe_delay = self.PROBE_DELAY
        self._stopped = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lightd-sync-health", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        start_quietly(self._thread)

    def poke(self, delay: float = 0.0) -> None:
        """Check within *delay* seconds (earlier than planned, never later)."""
        with self._lock:
            self._due = min(self._due, time.monotonic() + bounded(delay))
        self._wake.set()

    def probe(self) -> None:
        """Check soon: sooner than the interval, later each time until the remote is healthy."""
        with self._lock:
            delay = 0.0 if testing_mode() else self._probe_delay
            self._probe_delay = min(self._probe_delay * 2, self.interval)
            self._due = min(self._due, time.monotonic() + delay)
        self._wake.set()

    def stop(self) -> None:
        """Ask the thread to end; it does not wait for the next interval."""
        self._stopped = True
        self._wake.set()

    def join(self, deadline: float) -> bool:
        """Wait until *deadline* (``time.monotonic()``) for the thread to end; True if it has."""
        if self._thread.ident is None:
            return True
        self._thread.join(bounded(deadline - time.monotonic()))
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopped:
            with self._lock:
                wait = self._due - time.monotonic()
            if wait > 0:
                self._wake.wait(bounded(wait))
                self._wake.clear()
                continue  # re-read _due: a poke may have moved it, or stop() was called
            state = self._tracker.check()
            with self._lock:
                self._due = time.monotonic() + bounded(self.interval)
                if state.healthy:
                    self._probe_delay = self.PROBE_DELAY
