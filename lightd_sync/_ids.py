"""Event ids: UUIDs (version 7 layout) that sort in the order they were made."""

from __future__ import annotations

import os
import threading
import time
import uuid

__all__ = ["new_event_id"]

# Guards _last: the (milliseconds << 12 | sequence) of the last id made.
_lock = threading.Lock()
_last = 0


def new_event_id() -> str:
    """
    Return a new UUID string; every later one in this process sorts after it.

    The layout is RFC 9562's version 7: 48 bits of Unix milliseconds, a 12-bit
    sequence that keeps ids made within one millisecond in order, then random
    bits. A remote may compare the ids of one server's updates as strings to
    tell a stale update that arrived late from a newer one.
    """
    global _last
    with _lock:
        stamp = max(time.time_ns() // 1_000_000 << 12, _last + 1)
        _last = stamp
    millis, seq = stamp >> 12, stamp & 0xFFF
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (millis << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand
    return str(uuid.UUID(int=value))
