"""
The error mapping of the HTTP transports, written once: a failure becomes a DeliveryError.

Both HTTP transports (urllib3's own connections and ``requests``) hand every
exception of their client to :func:`delivery_error`, which finds in its chain
(arguments, ``reason``, ``__cause__``, ``__context__``) what really happened
and says it in the protocol's words, with a :attr:`~lightd_sync.DeliveryError.reason`.
The result never holds the token: its message is scrubbed, and the original
exception is kept as ``__cause__`` only if nothing in its chain holds the
token (a request head quoted by the standard library, a remote's echo).
Raise the result outside the ``except`` block, so that ``__context__`` stays empty.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator
from typing import Optional

import attrs

from .._exceptions import (
    DeliveryError,
    RemoteRejectedError,
    RemoteTimeoutError,
    RemoteUnreachableError,
)
from .._secrets import scrub
from ._conn import ClosedError, ConnectError, ProxyTunnelError
from ._deadline import AnswerTooLargeError, DeadlineExceededError

__all__ = ["Kinds", "causes", "delivery_error", "keep_cause_if_clean"]

_SHOWN = 200  # characters of a remote's own words (a status line) shown at most


@attrs.frozen
class Kinds:
    """
    A client's own exception classes, by what they mean (beyond the standard library's).

    Attributes:
        timeout: Raised when the client's timeout ran out.
        tls: Raised for a failed TLS handshake or certificate check.
        proxy: Raised when the proxy failed.
        connect: Raised when no connection could be made.
        wrappers: Those that only wrap another exception (skipped when finding the OS's words).
    """

    timeout: tuple[type[BaseException], ...] = ()
    tls: tuple[type[BaseException], ...] = ()
    proxy: tuple[type[BaseException], ...] = ()
    connect: tuple[type[BaseException], ...] = ()
    wrappers: tuple[type[BaseException], ...] = ()


def causes(exc: BaseException) -> Iterator[BaseException]:
    """*exc* and every exception it wraps (arguments, ``reason``, cause, context), outer first."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [*current.args, getattr(current, "reason", None)]
        linked += [current.__cause__, current.__context__]
        todo.extend(e for e in linked if isinstance(e, BaseException))


def _words(exc: BaseException, kinds: Kinds) -> str:
    """The operating system's (or the TLS library's) words for the failure."""
    skip: tuple[type[BaseException], ...] = (ConnectError, *kinds.wrappers)
    for current in causes(exc):
        if isinstance(current, ssl.SSLError):
            return str(current)
        if isinstance(current, OSError) and not isinstance(current, skip):
            return current.strerror or str(current) or type(current).__name__
        if isinstance(current, http.client.HTTPException):
            text = "".join(c if c.isprintable() else "?" for c in str(current)[:_SHOWN])
            return f"{type(current).__name__}: {text}" if text else type(current).__name__
    return type(exc).__name__


def delivery_error(
    exc: BaseException,
    what: str,
    *,
    token: str,
    timeout: float,
    closed: bool = False,
    timed_out: bool = False,
    proxy: Optional[str] = None,
    kinds: Kinds = Kinds(),
) -> DeliveryError:
    """
    The :class:`DeliveryError` that says what *exc* means for the request *what*.

    Args:
        exc: What the client raised.
        what: The request, e.g. ``POST https://host/api/update``.
        token: The secret to scrub from every word.
        timeout: The request's time limit, for the message.
        closed: Whether the transport was closed meanwhile (then that is why).
        timed_out: Whether the request's deadline had passed (a watchdog cut it off).
        proxy: The proxy the request went through, if any.
        kinds: The client's own exception classes.
    """
    chain = list(causes(exc))

    def has(*types: type[BaseException]) -> bool:
        return any(isinstance(e, types) for e in chain)

    err: DeliveryError
    big = next((e for e in chain if isinstance(e, AnswerTooLargeError)), None)
    if closed or (has(ClosedError) and not has(AnswerTooLargeError)):
        err = RemoteUnreachableError(f"{what}: the transport was closed", reason="closed")
    elif big is not None:
        err = RemoteRejectedError(
            f"{what}: the remote answered HTTP {big.status}, but {big}; "
            "no answer of the protocol is that large",
            status=big.status,
            reason="too_large",
        )
    elif timed_out or (
        has(DeadlineExceededError, socket.timeout, TimeoutError, *kinds.timeout)
        and not has(ConnectionRefusedError)
    ):
        err = RemoteTimeoutError(
            f"{what}: no answer within {timeout:g} s", retryable=True, reason="timeout"
        )
    else:
        words = _words(exc, kinds)
        if has(ssl.SSLError, ssl.CertificateError, *kinds.tls):
            reason = f"TLS failed: {words}"
            if "CERTIFICATE_VERIFY_FAILED" in reason and "mismatch" not in reason:
                reason += "; if the remote's CA is private, set remote.ca_bundle"
        elif proxy is not None and has(ProxyTunnelError, ConnectError, *kinds.proxy):
            reason = f"the proxy {proxy} failed: {words}"
        elif has(ProxyTunnelError, *kinds.proxy):
            reason = f"the proxy failed: {words}"
        elif has(ConnectError, *kinds.connect):
            reason = f"cannot connect: {words}"
        elif has(UnicodeError):
            reason = "the request cannot be encoded (check remote.url)"
        else:
            reason = f"connection failed: {words}"
        err = RemoteUnreachableError(f"{what}: {reason}", retryable=True)
    if token in err.message:
        err = type(err)(
            scrub(err.message, token),
            status=err.status,
            retryable=err.retryable,
            reason=err.reason,
        )
    keep_cause_if_clean(err, exc, token)
    return err


def keep_cause_if_clean(err: BaseException, cause: BaseException, token: str) -> None:
    """Make *cause* the ``__cause__`` of *err*, unless anything in its chain holds *token*."""
    clean = all(token not in repr(e) and token not in str(e) for e in causes(cause))
    err.__cause__ = cause if clean else None
    err.__suppress_context__ = True
