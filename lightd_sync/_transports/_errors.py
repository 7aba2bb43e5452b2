"""
The error mapping of the HTTP transports, written once: a failure becomes a DeliveryError.

Both HTTP transports (urllib3's own connections and ``requests``) hand every
exception of their client to :func:`delivery_error`, which finds in its chain
(arguments, ``reason``, ``__cause__``, ``__context__``) what really happened
and says it in the protocol's words, with a :attr:`~lightd_sync.DeliveryError.reason`.
The result never holds a secret (the token, the proxy's password): its
message is scrubbed before anything is cut to length, and the original
exception is kept as ``__cause__`` only if nothing in its chain (arguments,
attributes such as ``IncompleteRead.partial``, causes, contexts) holds one.
Raise the result outside the ``except`` block, so that ``__context__`` stays empty.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import socket
import ssl
from collections.abc import Iterator
from typing import Optional

import attrs
import urllib3

from .._deadline import AnswerTooLargeError, ClosedError, DeadlineExceededError, DoubtfulAnswerError
from .._exceptions import (
    DeliveryError,
    RemoteRejectedError,
    RemoteTimeoutError,
    RemoteUnreachableError,
)
from .._secrets import Secrets, holds_secret, scrub_all

__all__ = [
    "URLLIB3_KINDS",
    "Kinds",
    "causes",
    "clean_error",
    "delivery_error",
    "keep_cause_if_clean",
]

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


URLLIB3_KINDS = Kinds(
    timeout=(urllib3.exceptions.TimeoutError,),
    tls=(urllib3.exceptions.SSLError,),
    proxy=(urllib3.exceptions.ProxyError,),
    connect=(urllib3.exceptions.NewConnectionError,),
    wrappers=(urllib3.exceptions.HTTPError,),
)


def _attributes(exc: BaseException) -> list[object]:
    try:
        return list(vars(exc).values())
    except TypeError:  # no __dict__
        return []


def causes(exc: BaseException) -> Iterator[BaseException]:
    """*exc* and every exception it wraps (arguments, attributes, cause, context), outer first."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [*current.args, getattr(current, "reason", None), *_attributes(current)]
        linked += [current.__cause__, current.__context__]
        todo.extend(e for e in linked if isinstance(e, BaseException))


def _dirty(exc: BaseException, secrets: Secrets) -> bool:
    """Whether *exc* itself shows a secret: its text, repr, arguments or attributes."""
    values: list[object] = [exc, *exc.args, *_attributes(exc)]
    for value in values:
        if isinstance(value, BaseException) and value is not exc:
            continue  # walked on its own by causes()
        if isinstance(value, (str, bytes, bytearray, memoryview)) or value is exc:
            if holds_secret(value, secrets):
                return True
        elif holds_secret(repr(value), secrets):
            return True
    return False


def _shown(text: str, secrets: Secrets) -> str:
    """A remote's words as shown: secrets scrubbed first, then cut, then made printable."""
    text = scrub_all(text, secrets)[:_SHOWN]
    return "".join(c if c.isprintable() else "?" for c in text)


def _words(exc: BaseException, kinds: Kinds, secrets: Secrets) -> str:
    """The operating system's (or the TLS library's, or the proxy's) words for the failure."""
    skip = kinds.wrappers
    for current in causes(exc):
        if isinstance(current, ssl.SSLError):
            return _shown(str(current), secrets)
        if isinstance(current, OSError) and not isinstance(current, skip):
            return _shown(current.strerror or str(current) or type(current).__name__, secrets)
        if isinstance(current, http.client.HTTPException):
            text = _shown(str(current), secrets)
            return f"{type(current).__name__}: {text}" if text else type(current).__name__
    return type(exc).__name__


def delivery_error(
    exc: BaseException,
    what: str,
    *,
    secrets: Secrets,
    timeout: float,
    closed: bool = False,
    timed_out: bool = False,
    proxy: Optional[str] = None,
    kinds: Kinds = URLLIB3_KINDS,
) -> DeliveryError:
    """
    The :class:`DeliveryError` that says what *exc* means for the request *what*.

    Args:
        exc: What the client raised.
        what: The request, e.g. ``POST https://host/api/update``.
        secrets: The secrets to scrub from every word (:func:`~.._secrets.secrets_of`).
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
    doubt = next((e for e in chain if isinstance(e, DoubtfulAnswerError)), None)
    if closed or (has(ClosedError) and not has(AnswerTooLargeError)):
        err = RemoteUnreachableError(f"{what}: the transport was closed", reason="closed")
    elif big is not None:
        err = RemoteRejectedError(
            f"{what}: the remote answered HTTP {big.status}, but {big}; "
            "no answer of the protocol is that large",
            status=big.status,
            reason="too_large",
        )
    elif doubt is not None:
        err = RemoteUnreachableError(
            f"{what}: the remote answered HTTP {doubt.status}, but {doubt.why}: the answer "
            "cannot be trusted to be this request's; the connection was closed",
            retryable=True,
        )
    elif timed_out or (
        has(DeadlineExceededError, socket.timeout, TimeoutError, *kinds.timeout)
        and not has(ConnectionRefusedError)
    ):
        err = RemoteTimeoutError(
            f"{what}: no answer within {timeout:g} s", retryable=True, reason="timeout"
        )
    else:
        words = _words(exc, kinds, secrets)
        if has(ssl.SSLError, ssl.CertificateError, *kinds.tls):
            reason = f"TLS failed: {words}"
            if "CERTIFICATE_VERIFY_FAILED" in reason and "mismatch" not in reason:
                reason += "; if the remote's CA is private, set remote.ca_bundle"
        elif proxy is not None and has(*kinds.proxy):
            reason = f"the proxy {proxy} failed: {words}"
        elif has(*kinds.proxy):
            reason = f"the proxy failed: {words}"
        elif has(*kinds.connect):
            reason = f"cannot connect: {words}"
        elif has(UnicodeError):
            reason = "the request cannot be encoded (check remote.url)"
        else:
            reason = f"connection failed: {words}"
        err = RemoteUnreachableError(f"{what}: {reason}", retryable=True)
    return clean_error(err, secrets, cause=exc)


def keep_cause_if_clean(err: BaseException, cause: BaseException, secrets: Secrets) -> None:
    """Make *cause* the ``__cause__`` of *err*, unless anything in its chain shows a secret."""
    clean = not any(_dirty(e, secrets) for e in causes(cause))
    err.__cause__ = cause if clean else None
    err.__suppress_context__ = True


def clean_error(
    err: DeliveryError, secrets: Secrets, *, cause: Optional[BaseException] = None
) -> DeliveryError:
    """
    *err* with no secret anywhere: message, arguments, text attributes, chain.

    The rule every transport's errors pass through (the :class:`~.base.Transport`
    base applies it to plugins' too). *cause* (default: *err*'s own) is kept as
    ``__cause__`` only if nothing in its chain shows a secret; ``__context__``
    is dropped. Returns *err* itself when it is clean.
    """
    if cause is None:
        cause = err.__cause__ or err.__context__
    if not secrets:
        if cause is not None and cause is not err.__cause__:
            err.__cause__ = cause
            err.__suppress_context__ = True
        return err
    dirty_chain = cause is not None and any(_dirty(e, secrets) for e in causes(cause))
    if not _dirty(err, secrets):
        if cause is not None:
            err.__cause__ = None if dirty_chain else cause
            err.__suppress_context__ = True
            if dirty_chain:
                err.__context__ = None
        return err
    try:
        new = copy.copy(err)
    except Exception:  # a plugin's subclass that cannot be copied: the base class then
        new = DeliveryError(err.message, status=err.status, retryable=err.retryable)
    for name, value in _items(new):
        if isinstance(value, str):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(new, name, scrub_all(value, secrets))
    new.args = tuple(scrub_all(a, secrets) if isinstance(a, str) else a for a in err.args)
    new.__cause__ = None if dirty_chain or cause is None else cause
    new.__context__ = None
    new.__suppress_context__ = True
    new.__traceback__ = None
    return new


def _items(exc: BaseException) -> list[tuple[str, object]]:
    try:
        return list(vars(exc).items())
    except TypeError:
        return []
