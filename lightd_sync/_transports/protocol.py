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
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Protocol, Union

import attrs

from .._config import is_loopback_url
from .._exceptions import (
    AuthRejectedError,
    DeliveryError,
    RemoteRejectedError,
)
from .._ids import new_event_id
from .._logutil import get_logger, safe_log
from .._model import Event
from .._secrets import Secrets, scrub_all
from .._version import version

__all__ = [
    "BATCH_CAP",
    "BATCH_FALLBACK_STATUSES",
    "RETRYABLE_STATUSES",
    "BatchVerdict",
    "encode_batch",
    "encode_body",
    "judge_batch",
    "parse_offer",
    "with_event_ids",
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


def _remote_says(body: Union[bytes, Any], secrets: Secrets = ()) -> str:
    """
    A short, printable excerpt of the remote's own error text, if it gave one.

    *body* is the answer's bytes or an already parsed item. The secrets are
    scrubbed from the whole text **before** it is cut to length.
    """
    if isinstance(body, (bytes, bytearray)):
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return ""
    else:
        doc = body
    text = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(text, str) or not text:
        return ""
    text = scrub_all(text, secrets)
    clean = "".join(ch if ch.isprintable() else "?" for ch in text[:_SNIPPET])
    return f": {clean}"


def _shown_location(value: Optional[str], secrets: Secrets = ()) -> str:
    if not value:
        return ""
    if "@" in value or not value.isprintable():
        return " to a URL not shown here (it may hold a password)"
    value = scrub_all(value, secrets)  # before the cut: no piece of a secret survives it
    return f" to {value[:_LOCATION_SHOWN]!r}"


def _status_error(
    what: str, status: int, body: bytes, headers: Mapping[str, str], secrets: Secrets = ()
) -> DeliveryError:
    if status in (401, 403):
        return AuthRejectedError(
            f"{what}: the remote rejected the token (HTTP {status}); {_AUTH_HINT}",
            status=status,
        )
    if 300 <= status < 400:
        to = _shown_location(headers.get("Location"), secrets)
        return RemoteRejectedError(
            f"{what}: the remote answered HTTP {status}, a redirect{to}: remote.url is "
            "misconfigured (set it to the final URL); redirects are never followed since "
            "they would carry the token elsewhere",
            status=status,
            reason="redirect",
        )
    retry_after = parse_retry_after(headers.get("Retry-After"))
    return RemoteRejectedError(
        f"{what}: the remote answered HTTP {status}{_remote_says(body, secrets)}",
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


# The answers nearly every remote gives: judged without parsing them.
_ACCEPTED = frozenset({b'{"success": true}', b'{"success":true}', b'{"success": true}\n'})


def update_verdict(
    status: int, body: bytes, headers: Mapping[str, str], secrets: Secrets = ()
) -> None:
    """
    Judge the answer to ``POST /update``: return if delivered, raise otherwise.

    Delivered: 2xx with ``"success": true``, or with an empty body.
    """
    what = "POST /update"
    if not 200 <= status < 300:
        raise _status_error(what, status, body, headers, secrets)
    if not body.strip() or body in _ACCEPTED:
        return
    doc = _json_object(what, status, body)
    if "success" in doc and doc["success"] is not True:
        raise RemoteRejectedError(
            f'{what}: the remote answered "success": {json.dumps(doc["success"])}'
            f"{_remote_says(body, secrets)}",
            status=status,
        )


def health_verdict(
    status: int, body: bytes, headers: Mapping[str, str], secrets: Secrets = ()
) -> None:
    """Judge the answer to ``GET /health``: healthy only on 200 with ``"endpoint": "active"``."""
    what = "GET /health"
    if status != 200:
        raise _status_error(what, status, body, headers, secrets)
    doc = _json_object(what, status, body)
    if doc.get("endpoint") != "active":
        raise RemoteRejectedError(
            f'{what}: the remote answered 200 without "endpoint": "active"', status=status
        )


def scrubbed(exc: DeliveryError, secrets: Secrets) -> DeliveryError:
    """Return *exc* with *secrets* removed from its message (a remote may echo anything)."""
    message = scrub_all(exc.message, secrets)
    if message == exc.message:
        return exc
    return type(exc)(
        message,
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


Verdict = Callable[[int, bytes, Mapping[str, str], Secrets], None]


def judge(verdict: Verdict, what: str, answer: _Answer, secrets: Secrets) -> None:
    """
    Apply *verdict* to *answer*; raise its DeliveryError with the secrets scrubbed.

    The error is raised outside the ``except`` block, so that its ``__context__``
    is not the unscrubbed one.
    """
    try:
        verdict(answer.status, answer.data, answer.headers, secrets)
    except DeliveryError as exc:
        err = scrubbed(exc, secrets)
        err.__cause__ = None
    else:
        return
    raise err


# -- the batch extension (spec: "Extension: several updates in one request") -------

#: The most items one ``POST /updates`` carries, whatever the remote offers.
BATCH_CAP = 500
#: The most the spec lets a remote offer.
_OFFER_MAX = 10_000
#: Answers to ``POST /updates`` that mean the remote takes no batches after all.
BATCH_FALLBACK_STATUSES = frozenset({404, 405, 415, 501})


def parse_offer(status: int, body: bytes) -> int:
    """
    The batch offer of a health answer: ``batch.max``, or 0 when it offers nothing.

    Only a 200 answer whose JSON object has ``"batch": {"max": N}``, N an
    integer (not a boolean, not a float) from 1 to 10,000, offers batches.
    """
    if status != 200 or b'"batch"' not in body:
        return 0
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return 0
    batch = doc.get("batch") if isinstance(doc, dict) else None
    size = batch.get("max") if isinstance(batch, dict) else None
    if type(size) is not int or not 1 <= size <= _OFFER_MAX:
        return 0
    return size


def with_event_ids(events: Sequence[Event]) -> list[Event]:
    """*events*, each with an event id (a new one for those without: kept for re-sends)."""
    return [e if e.event_id else attrs.evolve(e, event_id=new_event_id()) for e in events]


def encode_batch(events: Sequence[Event]) -> bytes:
    """The body of ``POST /updates``: each event's body plus its ``event_id`` (compact, ASCII)."""
    items = [{**event.body(), "event_id": event.event_id} for event in events]
    return json.dumps({"updates": items}, separators=(",", ":")).encode("ascii")


#: What an answer to ``POST /updates`` means: one outcome per item, or "send them singly".
BatchVerdict = Union[list[Optional[DeliveryError]], None]


def judge_batch(answer: _Answer, count: int, secrets: Secrets) -> BatchVerdict:
    """
    Judge the answer to a ``POST /updates`` of *count* items (the spec's answer table).

    Returns:
        ``None`` when the remote does not take batches after all (404, 405,
        415, 501): the caller sends the items one ``POST /update`` each.
        Otherwise one entry per item: ``None`` accepted, else its error (a
        refused item fails as a 4xx to its own ``POST /update`` would; a status
        or a broken answer applies to every item).
    """
    what = "POST /updates"
    status, body = answer.status, answer.data
    if status in BATCH_FALLBACK_STATUSES:
        return None
    if not 200 <= status < 300:
        err = scrubbed(_status_error(what, status, body, answer.headers, secrets), secrets)
        return [err] * count
    broken = _broken_batch_answer(status, body, count)
    if isinstance(broken, str):
        err = RemoteRejectedError(
            f"{what}: the remote answered HTTP {status} {broken}", status=status
        )
        return [err] * count
    if broken is None:
        return [None] * count
    results: list[Optional[DeliveryError]] = []
    for item in broken:
        if isinstance(item, dict) and item.get("success") is True:
            results.append(None)
            continue
        results.append(
            RemoteRejectedError(
                f"{what}: the remote refused this update (HTTP {status}, "
                f'"success": false){_remote_says(item, secrets)}',
                status=422 if status < 300 else status,
                reason="http_4xx",
            )
        )
    return results


def _broken_batch_answer(status: int, body: bytes, count: int) -> Union[str, list[Any], None]:
    """Why a 2xx batch answer is broken (a string), its ``results`` (a list), or None: all taken."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return "with a body that is not valid JSON: the whole batch failed"
    if not isinstance(doc, dict):
        return "with JSON that is not an object: the whole batch failed"
    if doc.get("success") is not True:
        return 'without "success": true: the whole batch failed'
    if "results" not in doc:
        return None
    results = doc["results"]
    if not isinstance(results, list) or len(results) != count:
        n = len(results) if isinstance(results, list) else "not a list of"
        return f"with {n} results for {count} updates: the whole batch failed"
    return results


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
