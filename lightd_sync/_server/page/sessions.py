"""
The status page's login sessions: a server-side table of random session ids.

Why a table and not a signed cookie: the cookie is 32 random bytes that mean
nothing without this table, so there is nothing to forge, and logging out
really ends a session (a signed cookie stays valid until it expires, whatever
the server forgets). The price is that sessions live in one process: a
restart logs the operator out, and several worker processes (gunicorn
``-w 4``) each keep their own table, so the status page wants one process, as
``lightd-sync receiver`` is.

Each session remembers an HMAC of the operator token it was opened with
(keyed with a per-process random key, so the table never holds the token or
anything that tests guesses of it offline). When the operator token changes,
every session opened with the old one is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from typing import Callable, Optional

import attrs

__all__ = ["SessionTable"]

_ID_BYTES = 32
_COOKIE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_COOKIE_LENGTH = len(base64.urlsafe_b64encode(b"\0" * _ID_BYTES).rstrip(b"="))


@attrs.frozen
class _Session:
    expires: float  # clock() time after which the session is refused
    token_mac: bytes  # HMAC of the operator token the session was opened with


class SessionTable:
    """
    Open, check and end sessions; thread-safe.

    Args:
        operator_token: Returns the operator token in force now.
        ttl: Seconds a session lasts from login.
        max_sessions: Sessions kept at once; opening one more drops the
            expired ones, then the one closest to expiry.
        clock: Wall-clock seconds (tests inject their own).
    """

    def __init__(
        self,
        operator_token: Callable[[], str],
        *,
        ttl: float,
        max_sessions: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._operator_token = operator_token
        self._ttl = ttl
        self._max = max_sessions
        self._clock = clock
        self._key = secrets.token_bytes(32)  # never leaves this object
        # Guards _sessions, keyed by the SHA-256 of each session id (the ids
        # themselves are only ever in the operator's cookie).
        self._lock = threading.Lock()
        self._sessions: dict[bytes, _Session] = {}

    def _token_mac(self) -> bytes:
        token = self._operator_token().encode("utf-8")
        return hmac.new(self._key, token, hashlib.sha256).digest()

    def open(self) -> str:
        """Open a session; return its id, the cookie's value."""
        sid = base64.urlsafe_b64encode(secrets.token_bytes(_ID_BYTES)).rstrip(b"=").decode()
        session = _Session(self._clock() + self._ttl, self._token_mac())
        now = self._clock()
        with self._lock:
            if len(self._sessions) >= self._max:
                self._prune(now)
            if len(self._sessions) >= self._max:
                oldest = min(self._sessions, key=lambda k: self._sessions[k].expires)
                del self._sessions[oldest]
            self._sessions[_digest(sid)] = session
        return sid

    def valid(self, sid: Optional[str]) -> bool:
        """Whether *sid* names a session that is open, unexpired, and of the current token."""
        if not _well_formed(sid):
            return False
        assert sid is not None
        key = _digest(sid)
        now = self._clock()
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and session.expires <= now:
                del self._sessions[key]
                session = None
        if session is None:
            return False
        if not hmac.compare_digest(session.token_mac, self._token_mac()):
            self.close(sid)  # the operator token changed: this session is over
            return False
        return True

    def close(self, sid: Optional[str]) -> None:
        """End the session *sid* (logging out); an unknown id is ignored."""
        if _well_formed(sid):
            assert sid is not None
            with self._lock:
                self._sessions.pop(_digest(sid), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _prune(self, now: float) -> None:
        """Drop the expired sessions; the caller holds the lock."""
        for key in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[key]


def _digest(sid: str) -> bytes:
    return hashlib.sha256(sid.encode("ascii")).digest()


def _well_formed(sid: Optional[str]) -> bool:
    return isinstance(sid, str) and len(sid) == _COOKIE_LENGTH and _COOKIE_CHARS.issuperset(sid)
