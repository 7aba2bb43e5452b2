"""
The resync book: each server's latest update, and the latest ones the remote missed.

The engine re-sends what the remote missed once it is healthy again, at most
once per server per ``resync_interval`` (``health_interval``): a remote whose
``/update`` fails while its ``/health`` succeeds is never flooded, and once
``/update`` works again every server still converges to its latest status.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Optional

from ._forksafe import after_fork_in_child
from ._pending import Pending

__all__ = ["ResyncBook"]


class ResyncBook:
    """
    The latest :class:`Pending` of each server, and those not acknowledged yet.

    Bounded by *max_servers*: the least recently updated servers are forgotten first.

    Args:
        max_servers: How many servers are remembered.
        resync: Whether missed updates are remembered for a re-send at all.
    """

    def __init__(self, max_servers: int, *, resync: bool = True) -> None:
        # Guards _latest, _missed and _resent_at. Reentrant, like the ledger's
        # lock (update() may run in a signal handler that interrupted update()).
        self._lock = threading.RLock()
        self.max_servers = max_servers
        self.resync = resync
        self._latest: OrderedDict[str, Pending] = OrderedDict()  # server -> its latest update
        self._missed: OrderedDict[str, Pending] = OrderedDict()  # latest ones the remote missed
        self._resent_at: dict[str, float] = {}  # server -> when its last resync was queued
        after_fork_in_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._latest)

    @property
    def missed_count(self) -> int:
        """How many servers' latest updates wait for a re-send."""
        return len(self._missed)

    def record(self, item: Pending) -> None:
        """*item* is now its server's latest update (the caller's thread, before admission)."""
        server = item.server
        with self._lock:
            latest = self._latest
            latest[server] = item
            latest.move_to_end(server)
            if len(latest) > self.max_servers:
                gone, _ = latest.popitem(last=False)
                self._missed.pop(gone, None)
                self._resent_at.pop(gone, None)

    def is_latest(self, item: Pending) -> bool:
        """Whether *item* is still its server's latest update."""
        return self._latest.get(item.server) is item  # one dict read: atomic

    def superseded(self, item: Pending) -> bool:
        """Whether a newer update of *item*'s server is queued behind it."""
        newer = self._latest.get(item.server, item)
        return newer is not item and newer.queued

    def acknowledged(self, item: Pending) -> None:
        """The remote accepted *item*: nothing of its server waits for a re-send."""
        with self._lock:
            if self._latest.get(item.server) is item:
                self._missed.pop(item.server, None)

    def missed(self, item: Pending) -> bool:
        """
        Remember *item* for a re-send if it is still its server's latest.

        Returns:
            Whether it was remembered.
        """
        if not self.resync:
            return False
        server = item.server
        with self._lock:
            if self._latest.get(server) is not item:
                return False
            missed = self._missed
            missed[server] = item
            missed.move_to_end(server)
            return True

    def due(self, interval: float, *, now: Optional[float] = None) -> list[Pending]:
        """
        Take the missed updates due for a re-send, least recently updated first.

        A server is due unless its last re-send was less than *interval*
        seconds ago; the ones not due stay in the book for a later call.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [
                item
                for server, item in self._missed.items()
                if now - self._resent_at.get(server, -interval) >= interval
                and self._latest.get(server) is item
            ]
            for item in due:
                del self._missed[item.server]
                self._resent_at[item.server] = now
            # Forget what is not the latest any more (a newer one is on its way).
            stale = [s for s, item in self._missed.items() if self._latest.get(s) is not item]
            for server in stale:
                del self._missed[server]
            return due

    def give_back(self, items: list[Pending]) -> None:
        """Put back re-sends there was no room for; they are due again at once."""
        with self._lock:
            for item in items:
                if self._latest.get(item.server) is item:
                    self._missed[item.server] = item
                    self._resent_at.pop(item.server, None)
