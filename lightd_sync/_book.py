"""
The resync book: the servers whose latest update the remote missed.

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
from ._ledger import Ledger
from ._pending import Pending

__all__ = ["ResyncBook"]


class ResyncBook:
    """
    The latest updates the remote missed, in the order they were missed.

    Which update is a server's latest is the ledger's to say; the book only
    remembers the missed ones that still are. Bounded by *max_servers*, the
    oldest misses forgotten first.

    Args:
        ledger: Says which update is each server's latest.
        max_servers: How many servers are remembered.
        resync: Whether missed updates are remembered for a re-send at all.
    """

    def __init__(self, ledger: Ledger, max_servers: int, *, resync: bool = True) -> None:
        # Guards _missed and _resent_at. Reentrant, like the ledger's lock
        # (update() may run in a signal handler that interrupted update()).
        self._lock = threading.RLock()
        self._ledger = ledger
        self.max_servers = max_servers
        self.resync = resync
        self._missed: OrderedDict[str, Pending] = OrderedDict()  # server -> its missed update
        self._resent_at: dict[str, float] = {}  # server -> when its last resync was queued
        after_fork_in_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.RLock()

    @property
    def missed_count(self) -> int:
        """How many servers' latest updates wait for a re-send."""
        return len(self._missed)

    def acknowledged(self, item: Pending) -> None:
        """The remote accepted *item*: nothing of its server waits for a re-send."""
        if self._ledger.is_latest(item) and item.server in self._missed:
            with self._lock:
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
        if not self._ledger.is_latest(item):
            return False
        with self._lock:
            missed = self._missed
            missed[server] = item
            missed.move_to_end(server)
            if len(missed) > self.max_servers:
                gone, _ = missed.popitem(last=False)
                self._resent_at.pop(gone, None)
            return True

    def due(self, interval: float, *, now: Optional[float] = None) -> list[Pending]:
        """
        Take the missed updates due for a re-send, least recently updated first.

        A server is due unless its last re-send was less than *interval*
        seconds ago; the ones not due stay in the book for a later call.
        """
        now = time.monotonic() if now is None else now
        is_latest = self._ledger.is_latest
        with self._lock:
            # Forget what is not the latest any more (a newer one is on its way).
            stale = [s for s, item in self._missed.items() if not is_latest(item)]
            for server in stale:
                del self._missed[server]
                self._resent_at.pop(server, None)
            due = [
                item
                for server, item in self._missed.items()
                if now - self._resent_at.get(server, -interval) >= interval
            ]
            for item in due:
                del self._missed[item.server]
                self._resent_at[item.server] = now
            return due

    def give_back(self, items: list[Pending]) -> None:
        """Put back re-sends there was no room for; they are due again at once."""
        with self._lock:
            for item in items:
                if self._ledger.is_latest(item):
                    self._missed[item.server] = item
                    self._resent_at.pop(item.server, None)
