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
import re
import time
from collections.abc import Mapping
from typing import Any, Optional

from .._config import is_loopback_url
from .._exceptions import (
    AuthRejectedError,
    DeliveryError,
    RemoteRejectedError,
)
from .._logutil import get_logger, safe_log
from .._model import Update
from .._version import version

__all__ = [
    "RETRYABLE_STATUSES",
    "encode_body",
    "health_verdict",
    "parse_retry_after",
    "request_headers",
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


def encode_body(update: Update) -> bytes:
    """Return the exact bytes POSTed for *update* (compact JSON, ASCII)."""
    return json.dumps(update.body(), separators=(",", ":")).encode("ascii")


def parse_retry_after(value: Optional[str], *, now: Optional[float] = None) -> Optional[float]:
    """
    Parse a ``Retry-After`` header: delta-seconds or an HTTP date.

    Returns the seconds to wait (never negative), or ``None`` when absent or unreadable.
    """
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return max(0.0, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


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


def _status_error(what: str, status: int, body: bytes, headers: Mapping[str, str]) -> DeliveryError:
    if status in (401, 403):
        return AuthRejectedError(
            f"{what}: the remote rejected the token (HTTP {status}); {_AUTH_HINT}",
            status=status,
        )
    if 300 <= status < 400:
        return RemoteRejectedError(
            f"{what}: the remote answered a redirect (HTTP {status}); redirects are never "
            "followed since they would carry the token elsewhere: check remote.url",
            status=status,
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
        exc.message.replace(token, "<token>"),
        status=exc.status,
        retryable=exc.retryable,
        retry_after=exc.retry_after,
    )


_log = get_logger("transport")


def warn_about_security(url: str, *, unverified: Optional[str], proxy: object = None) -> None:
    """
    Log, once at a transport's creation, what weakens the connection to the remote.

    Args:
        url: The remote's base URL.
        unverified: Why TLS certificates are not verified, or None if they are.
        proxy: The proxy requests go through, if any (logged at INFO).
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
