"""Bearer-token checks for the servers lightd_sync ships (the receiver, the local API)."""

from __future__ import annotations

import hmac

__all__ = ["bearer_matches"]


def bearer_matches(header: object, expected: bytes) -> bool:
    """
    Whether an ``Authorization`` header value carries ``Bearer <expected>``.

    The scheme is matched case-insensitively; the token in constant time.
    """
    if not isinstance(header, str):
        return False
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = credentials.strip().encode("utf-8", "replace")
    return hmac.compare_digest(given, expected)
