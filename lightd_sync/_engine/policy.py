"""
The delivery policy: one immutable value, built from the config, asked one question per failure.

:class:`DeliveryPolicy` says everything the engine does about a failed
delivery: whether to retry and after how long (exponential backoff with full
jitter), how long every lane pauses for the remote's ``Retry-After`` (capped at
``max_retry_after``), and whether the update is worth re-sending once the
remote is healthy again (and how often at most). urllib3's ``Retry`` is the
model: a value, not a place where timers live.

Testing mode (:func:`set_testing_mode`, public as
:func:`lightd_sync.testing.set_testing`) makes every wait of the engine 0 s; it
is read at each wait, through :func:`wait_for`.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Optional

import attrs

from .._config import RemoteConfig
from .._exceptions import DeliveryError

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "RETRYABLE_STATUSES",
    "Decision",
    "DeliveryPolicy",
    "bounded",
    "set_testing_mode",
    "testing_mode",
    "wait_for",
]

#: Seconds before the first retry, at most (full jitter picks between 0 and this).
BACKOFF_BASE = 0.5
#: The longest wait between two attempts, whatever the attempt number.
BACKOFF_CAP = 10.0
#: Statuses after which sending the same request again may succeed.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
# Failures that are no answer at all: worth a retry when the transport says so.
_NO_ANSWER = frozenset({"timeout", "unreachable"})
# 4xx answers that say nothing about this update being wrong: worth re-sending later.
_TRANSIENT_4XX = frozenset({401, 403, 408, 429})

# Whether the engine's waits are cut to 0 s (testing mode). A bool is read and
# written atomically; it is read at every wait, so no lock is needed.
_testing = False


def testing_mode() -> bool:
    """Whether testing mode is on."""
    return _testing


def set_testing_mode(on: bool) -> bool:
    """Switch testing mode on or off; return what it was."""
    global _testing
    previous, _testing = _testing, bool(on)
    return previous


def bounded(seconds: float) -> float:
    """*seconds* made safe for any wait of :mod:`threading` (0 to ``TIMEOUT_MAX``, inf included)."""
    if not seconds > 0:  # negative, zero or nan
        return 0.0
    return min(seconds, threading.TIMEOUT_MAX)


#: How often a long wait looks again at the testing switch.
_RECHECK = 0.1


def wait_for(event: threading.Event, seconds: float) -> bool:
    """
    Wait up to *seconds* for *event*; return whether it is set.

    Any number is fine, ``math.inf`` included. In testing mode the wait is
    0 s, and a wait already under way ends within 0.1 s of the switch.
    """
    end = time.monotonic() + bounded(seconds)
    while True:
        if _testing:
            return event.is_set()
        left = end - time.monotonic()
        if left <= 0:
            return event.is_set()
        if event.wait(min(left, _RECHECK)):
            return True


@attrs.frozen
class Decision:
    """
    What to do after one failed attempt.

    Attributes:
        retry: Send the same update again.
        delay: Seconds to wait before that retry.
        pause: Seconds every lane holds its sends because the remote asked
            (``Retry-After``, capped); 0 when it did not.
        asked: The ``Retry-After`` the remote sent, when it was above the cap.
        resync: If the update ends failed: re-send it once the remote is
            healthy again (while it is still its server's latest).
    """

    retry: bool
    delay: float
    pause: float
    asked: Optional[float]
    resync: bool


@attrs.frozen
class DeliveryPolicy:
    """
    Retries, backoff, the ``Retry-After`` cap and resync, as one value.

    Attributes:
        retries: Extra attempts after the first one, for failures a retry can fix.
        backoff_base: Seconds before the first retry, at most.
        backoff_cap: The longest wait between two attempts.
        max_retry_after: The longest ``Retry-After`` honoured; longer ones are cut to it.
        retryable_statuses: HTTP statuses worth a retry.
        resync: Whether failed updates are re-sent once the remote is healthy.
        resync_interval: A server's update is re-sent at most once per this
            many seconds (``health_interval``), so a remote whose ``/update``
            fails while ``/health`` succeeds is never flooded.
    """

    retries: int = 2
    backoff_base: float = BACKOFF_BASE
    backoff_cap: float = BACKOFF_CAP
    max_retry_after: float = 300.0
    retryable_statuses: frozenset[int] = RETRYABLE_STATUSES
    resync: bool = True
    resync_interval: float = 30.0

    @classmethod
    def from_config(cls, config: RemoteConfig) -> DeliveryPolicy:
        """The policy *config* asks for."""
        return cls(
            retries=config.retries,
            max_retry_after=config.max_retry_after,
            resync=config.resync,
            resync_interval=config.health_interval,
        )

    def backoff(self, attempt: int) -> float:
        """Seconds before retry number *attempt* (1, 2, ...): full jitter, capped."""
        ceiling = min(self.backoff_cap, self.backoff_base * (2.0 ** min(attempt - 1, 64)))
        return random.uniform(0.0, ceiling)  # noqa: S311  (jitter, not a secret)

    def retryable(self, error: DeliveryError) -> bool:
        """Whether sending the same request again may succeed."""
        if error.status is not None:
            return error.status in self.retryable_statuses
        return error.retryable and error.reason in _NO_ANSWER

    def resync_worthy(self, error: DeliveryError) -> bool:
        """
        Whether an update that failed with *error* is re-sent when the remote recovers.

        Everything but a 4xx that judges the update itself (400, 404, 422, ...).
        """
        status = error.status
        return status is None or not 400 <= status < 500 or status in _TRANSIENT_4XX

    def after_failure(self, error: DeliveryError, attempt: int) -> Decision:
        """
        Decide what follows attempt number *attempt* (0 for the first) failing with *error*.

        A ``Retry-After`` of any size (the transport parses it; garbage is
        ``None``) pauses every lane for at most :attr:`max_retry_after`; a
        retry then waits at least that long.
        """
        asked = error.retry_after
        pause = 0.0
        above: Optional[float] = None
        if asked is not None and asked > 0:  # nan and negatives are no pause
            pause = min(asked, self.max_retry_after)
            if asked > self.max_retry_after:
                above = asked
        retry = self.retryable(error) and attempt < self.retries
        delay = max(self.backoff(attempt + 1), pause) if retry else 0.0
        return Decision(
            retry=retry,
            delay=delay,
            pause=pause,
            asked=above,
            resync=self.resync and self.resync_worthy(error),
        )
