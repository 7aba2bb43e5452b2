"""
The protocol's wire rules, shared by every HTTP-speaking transport.

What is sent (paths, headers, body bytes) and how an answer is judged
(delivered, or which :class:`DeliveryError`) live here once, so that the
urllib3 and requests flavours cannot drift apart.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional, Protocol

from .._config import is_loopback_url
from .._exceptions import (
    AuthRejectedError,
    DeliveryError,
    RemoteRejectedError,
)
from .._logutil import get_logger, safe_log
from .._model import Event
from .._secrets import scrub
from .._version import version

__all__ = [
    "RETRYABLE_STATUSES",
    "encode_body",
    "health_verdict",
    "parse_retry_after",
    "request_headers",
    "judge",
    "scrubbed",
    "warn_about_security",
    "update_verdict",
]

#: Statuses after which sending the same request again may succeed.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
_AUTH_HINT = "verify that the tokens match on both sides"
_SNIPPET = 200
# ASCII digits only: str.isdigit() also takes '²', which float() refuses. A
# negative delta is not in the RFC; it means "now", like a date in the past.
_DELTA_SECONDS = re.compile(r"-?[0-9]+")
#: The longest wait a Retry-After can say (a year: finite; the engine caps it far lower).
MAX_RETRY_AFTER = 86400.0 * 365
_MAX_DIGITS = 12  # more digits than any sane delay: no need to read them all
_LOCATION_SHOWN = 200


def request_headers(token: str, *, post: bool) -> dict[str, str]:
    """Return the headers of a request to the remote (``post`` adds the body's type)."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json",
        "User-Agent": f"lightd-sync/{version()}",
    }
    if post:
        headers["Content-Type"] = "application/json"
    return headers


def encode_body(update: Event) -> bytes:
    """Return the exact bytes POSTed for *update* (compact JSON, ASCII)."""
    return json.dumps(update.body(), separators=(",", ":")).encode("ascii")


def parse_retry_after(value: Optional[str], *, now: Optional[float] = None) -> Optional[float]:
    """
    Parse a ``Retry-After`` header: delta-seconds or an HTTP date.

    Whatever the remote sent (huge numbers, ``inf``, dates in year 9999,
    text in any script), this never raises.

    Returns:
        The seconds to wait, finite and between 0 and :data:`MAX_RETRY_AFTER`
        (a value in the past or a negative one is 0), or ``None`` when absent
        or unreadable.
    """
    if not value or not isinstance(value, str):
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        if value.startswith("-"):
            return 0.0
        digits = value.lstrip("0")
        if len(digits) > _MAX_DIGITS:
            return MAX_RETRY_AFTER
        return min(MAX_RETRY_AFTER, float(int(digits or "0")))
    try:
        when = email.utils.parsedate_to_datetime(value)
        seconds = when.timestamp() - (time.time() if now is None else now)
    except Exception:  # any text at all reaches this parser: what cannot be read is None
        return None
    if not math.isfinite(seconds):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


def _remote_says(body: bytes) -> str:
    """A short, printable excerpt of the remote's own error text, if it gave one."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    text = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(text, str) or not text:
        return ""
    clean = "".join(ch if ch.isprintable() else "?" for ch in text[:_SNIPPET])
    return f": {clean}"


def _shown_location(value: Optional[str]) -> str:
    if not value:
        return ""
    if "@" in value or not value.isprintable():
        return " to a URL not shown here (it may hold a password)"
    return f" to {value[:_LOCATION_SHOWN]!r}"


def _status_error(what: str, status: int, body: bytes, headers: Mapping[str, str]) -> DeliveryError:
    if status in (401, 403):
        return AuthRejectedError(
            f"{what}: the remote rejected the token (HTTP {status}); {_AUTH_HINT}",
            status=status,
        )
    if 300 <= status < 400:
        to = _shown_location(headers.get("Location"))
        return RemoteRejectedError(
            f"{what}: the remote answered HTTP {status}, a redirect{to}: remote.url is "
            "misconfigured (set it to the final URL); redirects are never followed since "
            "they would carry the token elsewhere",
            status=status,
            reason="redirect",
        )
    retry_after = parse_retry_after(headers.get("Retry-After"))
    return RemoteRejectedError(
        f"{what}: the remote answered HTTP {status}{_remote_says(body)}",
        status=status,
        retryable=status in RETRYABLE_STATUSES,
        retry_after=retry_after,
    )


def _json_object(what: str, status: int, body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise RemoteRejectedError(
            f"{what}: the remote answered HTTP {status} with a body that is not valid JSON",
            status=status,
        ) from None
    if not isinstance(doc, dict):
        raise RemoteRejectedError(
            f"{what}: the remote answered HTTP {status} with JSON that is not an object",
            status=status,
        )
    return doc


def update_verdict(status: int, body: bytes, headers: Mapping[str, str]) -> None:
    """
    Judge the answer to ``POST /update``: return if delivered, raise otherwise.

    Delivered: 2xx with ``"success": true``, or with an empty body.
    """
    what = "POST /update"
    if not 200 <= status < 300:
        raise _status_error(what, status, body, headers)
    if not body.strip():
        return
    doc = _json_object(what, status, body)
    if "success" in doc and doc["success"] is not True:
        raise RemoteRejectedError(
            f'{what}: the remote answered "success": {json.dumps(doc["success"])}'
            f"{_remote_says(body)}",
            status=status,
        )


def health_verdict(status: int, body: bytes, headers: Mapping[str, str]) -> None:
    """Judge the answer to ``GET /health``: healthy only on 200 with ``"endpoint": "active"``."""
    what = "GET /health"
    if status != 200:
        raise _status_error(what, status, body, headers)
    doc = _json_object(what, status, body)
    if doc.get("endpoint") != "active":
        raise RemoteRejectedError(
            f'{what}: the remote answered 200 without "endpoint": "active"', status=status
        )


def scrubbed(exc: DeliveryError, token: str) -> DeliveryError:
    """Return *exc* with *token* removed from its message (a remote may echo anything)."""
    if token not in exc.message:
        return exc
    return type(exc)(
        scrub(exc.message, token),
        status=exc.status,
        retryable=exc.retryable,
        retry_after=exc.retry_after,
        reason=exc.reason,
    )


class _Answer(Protocol):
    @property
    def status(self) -> int: ...
    @property
    def data(self) -> bytes: ...
    @property
    def headers(self) -> Mapping[str, str]: ...


Verdict = Callable[[int, bytes, Mapping[str, str]], None]


def judge(verdict: Verdict, what: str, answer: _Answer, token: str) -> None:
    """
    Apply *verdict* to *answer*; raise its DeliveryError with the token scrubbed.

    The error is raised outside the ``except`` block, so that its ``__context__``
    is not the unscrubbed one.
    """
    try:
        verdict(answer.status, answer.data, answer.headers)
    except DeliveryError as exc:
        err = scrubbed(exc, token)
        err.__cause__ = None
    else:
        return
    raise err


_log = get_logger("transport")


def warn_about_security(
    url: str,
    *,
    unverified: Optional[str],
    proxy: object = None,
    proxy_url: Optional[str] = None,
) -> None:
    """
    Log, once at a transport's creation, what weakens the connection to the remote.

    Args:
        url: The remote's base URL.
        unverified: Why TLS certificates are not verified, or None if they are.
        proxy: The proxy requests go through, if any (logged at INFO).
        proxy_url: That proxy's URL: plain http:// requests through a proxy on
            another machine cross the network in clear text, even to a loopback remote.
    """
    if url.startswith("https:") and unverified is not None:
        safe_log(
            _log,
            logging.WARNING,
            "TLS CERTIFICATE VERIFICATION IS OFF (%s): anyone on the network path to %s "
            "can read the token and forge the remote's answers; trust a private CA with "
            "remote.ca_bundle instead",
            unverified,
            url,
        )
    elif url.startswith("http:") and proxy_url is not None and not is_loopback_url(proxy_url):
        safe_log(
            _log,
            logging.WARNING,
            "remote.url %s is plain http:// through the proxy %s on another machine: the "
            "token and the statuses cross the network unencrypted; use https:// in production",
            url,
            proxy_url,
        )
    elif url.startswith("http:") and not is_loopback_url(url):
        safe_log(
            _log,
            logging.WARNING,
            "remote.url %s is plain http:// to another machine: the token and the statuses "
            "cross the network unencrypted; use https:// in production",
            url,
        )
    if proxy is not None:
        safe_log(_log, logging.INFO, "reaching %s through the proxy %s", url, proxy)
