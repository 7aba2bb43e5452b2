"""The transport slot: the transport in use now, and the ones a reload replaced."""

from __future__ import annotations

import logging
import threading
from typing import Optional

from .._logutil import get_logger, safe_log
from .._transports.base import Transport

__all__ = ["TransportSlot", "close_quietly"]

log = get_logger("engine")


def close_quietly(transport: Transport) -> None:
    """Close *transport*, logging (not raising) what it raises."""
    try:
        transport.close()
    except Exception as exc:
        safe_log(log, logging.WARNING, "closing the transport %r raised %r", transport, exc)


class TransportSlot:
    """
    Which transport requests go through, and when a replaced one may be closed.

    A reload swaps in a new transport while requests are still in flight on
    the old one; the old one is closed when its last user releases it. No
    transport is closed (which may do I/O) while the slot's lock is held.
    """

    def __init__(self, transport: Transport) -> None:
        # Guards _current, _users and _retired.
        self._lock = threading.Lock()
        self._current = transport
        self._users: dict[int, int] = {}  # id(transport) -> requests using it now
        self._retired: list[Transport] = []  # replaced, still in use: closed once idle

    @property
    def current(self) -> Transport:
        """The transport new requests go through."""
        return self._current

    def acquire(self) -> Transport:
        """Take the current transport for one request; give it back with :meth:`release`."""
        with self._lock:
            transport = self._current
            key = id(transport)
            self._users[key] = self._users.get(key, 0) + 1
            return transport

    def release(self, transport: Transport) -> None:
        """Give back *transport*; close it if a reload replaced it and this was its last user."""
        with self._lock:
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

    def swap(self, transport: Transport) -> Optional[Transport]:
        """
        Send new requests through *transport*.

        Returns:
            The old transport if nothing uses it: the caller closes it (no
            lock held). A busy one is closed by its last :meth:`release`.
        """
        with self._lock:
            old, self._current = self._current, transport
            if old is transport:
                return None
            if id(old) in self._users:
                self._retired.append(old)
                return None
            return old

    def close_all(self) -> None:
        """Close every transport, busy or not (a busy request is cut off)."""
        with self._lock:
            transports = [self._current, *self._retired]
            self._retired = []
        for transport in transports:
            close_quietly(transport)
