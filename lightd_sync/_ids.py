"""Event ids: UUIDs (version 7 layout) that sort in the order they were made."""

from __future__ import annotations

import random
import threading
import time

from ._forksafe import after_fork_in_child

__all__ = ["new_event_id"]

# Guards _last: the (milliseconds << 12 | sequence) of the last id made.
# Replaced in a forked child (the parent may have held it at fork time).
_lock = threading.Lock()
_last = 0
_VERSION_AND_VARIANT = (0x7 << 76) | (0b10 << 62)
_RANDOM_BITS = (1 << 62) - 1


def new_event_id() -> str:
    """
    Return a new UUID string; every later one in this process sorts after it.

    The layout is RFC 9562's version 7: 48 bits of Unix milliseconds, a 12-bit
    sequence that keeps ids made within one millisecond in order, then random
    bits. A remote may compare the ids of one server's updates as strings to
    tell a stale update that arrived late from a newer one. The random bits
    make ids unique, not secret.
    """
    global _last
    with _lock:
        stamp = max(time.time_ns() // 1_000_000 << 12, _last + 1)
        _last = stamp
    millis, seq = stamp >> 12, stamp & 0xFFF
    value = (millis << 80) | (seq << 64) | _VERSION_AND_VARIANT | random.getrandbits(62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _reset_in_child() -> None:
    global _lock
    _lock = threading.Lock()


after_fork_in_child(_reset_in_child)
