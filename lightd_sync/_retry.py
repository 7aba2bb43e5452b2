"""The retry policy: which failures are worth another try, and how long to wait first."""

from __future__ import annotations

import random
from typing import Optional

from ._exceptions import DeliveryError

__all__ = ["BACKOFF_BASE", "BACKOFF_CAP", "backoff_delay", "resync_worthy"]

#: Seconds before the first retry, at most (full jitter picks between 0 and this).
BACKOFF_BASE = 0.5
#: The longest wait between two attempts, whatever the attempt number.
BACKOFF_CAP = 10.0

# 4xx answers that say nothing about this update being wrong: worth re-sending later.
_TRANSIENT_4XX = frozenset({401, 403, 408, 429})


def backoff_delay(
    attempt: int,
    *,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
    retry_after: Optional[float] = None,
    rand: random.Random = random._inst,  # the random module's own generator
) -> float:
    """
    Seconds to wait before retry number *attempt* (1, 2, ...).

    Exponential backoff with full jitter: uniform in ``[0, min(cap, base * 2**(attempt-1))]``,
    and never less than the remote's ``Retry-After``.
    """
    ceiling = min(cap, base * (2 ** (attempt - 1)))
    delay = rand.uniform(0, ceiling)
    return max(delay, retry_after or 0.0)


def resync_worthy(exc: DeliveryError) -> bool:
    """
    Whether an update that failed with *exc* should be re-sent when the remote recovers.

    Everything but a 4xx that judges the update itself (400, 404, 422, ...).
    """
    status = exc.status
    return status is None or not 400 <= status < 500 or status in _TRANSIENT_4XX
