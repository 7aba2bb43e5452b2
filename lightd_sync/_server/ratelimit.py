"""A token bucket per client, in bounded memory: :class:`RateLimiter`."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from typing import Callable

from .._forksafe import after_fork_in_child

__all__ = ["MAX_CLIENTS", "RateLimiter"]

#: How many clients the limiter remembers at most.
MAX_CLIENTS = 10_000


class RateLimiter:
    """
    Allow each client *rate* requests per second on average, in bursts of up to *burst*.

    A client's bucket holds up to *burst* tokens, refills at *rate* tokens per
    second, and each request takes one. A bucket left alone long enough to be
    full again is forgotten, since a new bucket is the same; beyond
    *max_clients* buckets the least recently used is forgotten too (that
    client starts afresh), so memory stays bounded whatever the clients do.

    Args:
        rate: Tokens added per second; ``math.inf`` means no limit.
        burst: Size of a bucket: the requests a client may make at once.
        clock: Monotonic seconds; injectable for tests.
        max_clients: Buckets remembered at most.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = burst
        self._clock = clock
        self._max_clients = max(1, max_clients)
        self._unlimited = math.isinf(self.rate)
        self._refill_time = burst / self.rate  # an idle bucket is full again after this
        # Guards _buckets: client key -> (tokens, time of last update), least
        # recently used first. Request threads take tokens concurrently.
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # a parent's thread may have held it

    def acquire(self, key: str) -> float:
        """
        Take a token for client *key*.

        Returns:
            0.0 if the request may go ahead, else the seconds until a token is available.
        """
        if self._unlimited:
            return 0.0
        with self._lock:
            now = self._clock()
            self._forget_idle(now)
            entry = self._buckets.pop(key, None)
            if entry is None:
                tokens = float(self.burst)
            else:
                tokens, last = entry
                tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate)
            if tokens >= 1.0:
                tokens -= 1.0
                wait = 0.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
        return wait

    def _forget_idle(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            _tokens, last = next(iter(buckets.values()))
            if now - last < self._refill_time:
                return
            buckets.popitem(last=False)

    def __len__(self) -> int:
        """The number of clients remembered now."""
        with self._lock:
            return len(self._buckets)
