"""
Every error lightd_sync raises derives from one base, :class:`LightdSyncError`.

.. code-block:: text

    LightdSyncError
     ├── ConfigError (also a ValueError)    bad config.json, env var or argument
     └── DeliveryError                      one request to the remote failed
          ├── RemoteUnreachableError        refused, reset, DNS, TLS: nothing answered
          ├── RemoteTimeoutError            no answer within ``timeout`` seconds
          ├── AuthRejectedError             401/403: the tokens do not match
          └── RemoteRejectedError           other non-2xx, ``"success": false``, bad JSON

Transports translate their backend's exceptions (urllib3's, ``OSError``) into
these at their boundary, with ``raise ... from exc``; nothing else leaks.
No message ever contains the token.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "AuthRejectedError",
    "ConfigError",
    "DeliveryError",
    "LightdSyncError",
    "RemoteRejectedError",
    "RemoteTimeoutError",
    "REASONS",
    "RemoteUnreachableError",
]


class LightdSyncError(Exception):
    """
    Base class of every error that lightd_sync raises.

    Catch this to handle anything the library can raise.
    """


class ConfigError(LightdSyncError, ValueError):
    """
    The configuration is invalid.

    The message names the key path and what was wrong, e.g.
    ``remote.timeout: expected a number > 0, got 'ten'``. It never contains
    the token.
    """


class DeliveryError(LightdSyncError):
    """
    One request to the remote failed.

    Args:
        message: What went wrong, for a log line.
        status: The HTTP status code, when the remote answered at all.
        retryable: Whether sending the same request again may succeed
            (connection errors, timeouts, 429, 502, 503, 504).
        retry_after: Seconds the remote asked us to wait (``Retry-After``),
            as the remote said it (the engine caps it at ``max_retry_after``).
        reason: A short stable code for why (see :data:`REASONS`); by default
            derived from the class and *status*.

    .. versionadded:: 0.2.0 *reason*.
    """

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        retryable: bool = False,
        retry_after: Optional[float] = None,
        reason: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        if reason is None:
            reason = self._default_reason()
        elif reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}; expected one of {', '.join(REASONS)}")
        self.reason = reason

    def _default_reason(self) -> str:
        status = self.status
        if status is None:
            return "unreachable"
        if status in (401, 403):
            return "auth"
        if 300 <= status < 400:
            return "redirect"
        if 400 <= status < 500:
            return "http_4xx"
        if status >= 500:
            return "http_5xx"
        return "rejected"

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments do not survive the default pickling.
        return (
            _rebuild,
            (type(self), self.message, self.status, self.retryable, self.retry_after, self.reason),
        )


#: Every reason a delivery can fail for, as :attr:`DeliveryError.reason` gives it.
REASONS = (
    "timeout",  # no complete answer within remote.timeout
    "unreachable",  # refused, reset, DNS, TLS, proxy: nothing usable answered
    "auth",  # 401 or 403
    "http_4xx",  # another 4xx
    "http_5xx",  # a 5xx
    "rejected",  # 2xx without "success": true, or a body that is not JSON
    "too_large",  # the answer was larger than the engine reads (64 KiB)
    "redirect",  # 3xx: never followed (it would carry the token elsewhere)
    "closed",  # cut off by close() (or the transport was closed)
)


def _rebuild(  # noqa: PLR0917 - pickle calls it positionally
    cls: type[DeliveryError],
    message: str,
    status: Optional[int],
    retryable: bool,
    retry_after: Optional[float],
    reason: str,
) -> DeliveryError:
    return cls(message, status=status, retryable=retryable, retry_after=retry_after, reason=reason)


class RemoteUnreachableError(DeliveryError):
    """The remote could not be reached: connection refused or reset, DNS or TLS failure."""


class RemoteTimeoutError(DeliveryError):
    """The remote did not answer within the configured ``timeout``."""

    def _default_reason(self) -> str:
        return "timeout"


class AuthRejectedError(DeliveryError):
    """
    The remote answered 401 or 403: it rejected the token.

    Verify that the remote and this node hold the same token.
    """


class RemoteRejectedError(DeliveryError):
    """
    The remote answered, but not with success.

    A non-2xx status other than 401/403, a 3xx redirect (never followed: it
    would carry the token elsewhere), ``"success": false``, or a body that is
    not valid JSON.
    """
