"""
The receiver's wire rules: what a request must look like, checked one field at a time.

Every rule raises :class:`RequestError` with the status to answer and a
message naming the field at fault; no message ever echoes what was sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Optional
from urllib.parse import parse_qs

import attrs

from .._model import (
    BILLING_FIELDS,
    MAX_MESSAGE_LENGTH,
    MAX_SERVER_ID_LENGTH,
    BillingEvent,
    Event,
    Status,
    Update,
    billing_number_problem,
    server_id_problem,
    timestamp_problem,
)

__all__ = [
    "RequestError",
    "ServerFilter",
    "check_event_id",
    "event_id",
    "history_limit",
    "invalid",
    "media_type",
    "parse_batch",
    "parse_event",
    "parse_json",
    "parse_update",
    "read_exactly",
    "servers_query",
    "usage_query",
]

_MAX_EVENT_ID = 64
_HISTORY_LIMIT = 1000
_MAX_HISTORY_LIMIT = 10_000
_STATUSES = frozenset(s.value for s in Status)
_SERVER_RULE = (
    f"server: must be a non-empty string of at most {MAX_SERVER_ID_LENGTH} printable characters"
)


class RequestError(Exception):
    """Answer with an error: raised anywhere in the handling of a request."""

    def __init__(
        self, status: int, outcome: str, message: str, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.message = message
        self.headers = list(headers)


def invalid(message: str) -> RequestError:
    """A 400 naming the field at fault."""
    return RequestError(400, "invalid", message)


def media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a ``Content-Type`` value into its type and parameters, all lower case."""
    kind, *params = value.split(";")
    parsed = {}
    for param in params:
        key, _, val = param.partition("=")
        parsed[key.strip().lower()] = val.strip().strip('"').lower()
    return kind.strip().lower(), parsed


def read_exactly(stream: Any, length: int) -> bytes:
    """Read *length* bytes of body; 400 if the client stops sending first."""
    chunks, left = [], length
    while left > 0:
        try:
            chunk = stream.read(left)
        except OSError:  # the connection timed out or was reset
            chunk = b""
        if not chunk:
            raise invalid("body: shorter than Content-Length (truncated or too slow)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """Decode a body: 400 unless it is UTF-8 JSON."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("body: not valid UTF-8") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # ValueError includes JSONDecodeError
        raise invalid("body: not valid JSON") from None


def _text_problem(name: str, value: str) -> Optional[str]:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escaped in the JSON
        return f"{name}: must be valid Unicode text"
    if "\0" in value:  # PostgreSQL's text cannot hold it; neither store takes it
        return f"{name}: must not contain NUL characters"
    return None


def parse_update(doc: Any) -> Update:
    """Check a decoded status or error update against the contract; an :class:`Update`."""
    event = parse_event(doc)
    if not isinstance(event, Update):
        raise invalid('event: must be "update"')
    return event


def parse_event(doc: Any, event_id: Optional[str] = None) -> Event:
    """Check a decoded ``POST /update`` body: an :class:`Update` or a :class:`BillingEvent`.

    *event_id* (already checked) is given to the event.
    """
    if not isinstance(doc, dict):
        raise invalid("body: must be a JSON object")
    event = doc.get("event")
    if type(event) is str and event == "billing":
        return _parse_billing(doc, event_id)
    if not (type(event) is str and event == "update"):
        raise invalid('event: must be "update" or "billing"')
    server = doc.get("server")
    if server_id_problem(server) is not None:
        raise invalid(_SERVER_RULE)
    assert isinstance(server, str)  # server_id_problem checked it
    if "status" in doc and "error" in doc:
        raise invalid("error: not allowed together with status; send one of them")
    if "status" in doc:
        status = doc["status"]
        if not (type(status) is str and status in _STATUSES):
            raise invalid("status: must be one of installing, ready, failed")
        return Update(server, status, event_id=event_id)
    if "error" in doc:
        error, data = doc["error"], doc.get("data")  # data: null is data left out
        if not (type(error) is str and error and len(error) <= MAX_MESSAGE_LENGTH):
            raise invalid(
                f"error: must be a non-empty string of at most {MAX_MESSAGE_LENGTH} characters"
            )
        problem = _text_problem("error", error)
        if problem is not None:
            raise invalid(problem)
        if data is not None:
            if type(data) is not str:
                raise invalid("data: must be a string (the error message), or left out")
            problem = _text_problem("data", data)
            if problem is not None:
                raise invalid(problem)
        return Update(server, Status.FAILED, data, error=error, event_id=event_id)
    raise invalid("status: required (installing, ready or failed), or error (with data)")


def _parse_billing(doc: dict[str, Any], event_id: Optional[str]) -> BillingEvent:
    server = doc.get("server")
    if server_id_problem(server) is not None:
        raise invalid(_SERVER_RULE)
    assert isinstance(server, str)
    numbers: dict[str, Any] = {}
    for name in BILLING_FIELDS:
        if name not in doc:
            raise invalid(f"{name}: required in a billing event (a number >= 0)")
        problem = billing_number_problem(name, doc[name])
        if problem is not None:
            raise invalid(problem)
        numbers[name] = doc[name]
    if "timestamp" not in doc:
        raise invalid("timestamp: required in a billing event (whole seconds since the epoch)")
    problem = timestamp_problem(doc["timestamp"])
    if problem is not None:
        raise invalid(problem)
    return BillingEvent(server, timestamp=doc["timestamp"], event_id=event_id, **numbers)


def check_event_id(value: object, name: str = "X-Lightd-Event-Id") -> Optional[str]:
    """An event id as sent (header or batch item); 400 naming *name* if malformed."""
    if value is None or value == "":
        return None
    if not (
        isinstance(value, str)
        and len(value) <= _MAX_EVENT_ID
        and value.isascii()
        and value.isprintable()
    ):
        raise invalid(f"{name}: must be at most {_MAX_EVENT_ID} printable ASCII characters")
    return value


def event_id(environ: dict[str, Any]) -> Optional[str]:
    """The ``X-Lightd-Event-Id`` extension header, if sent; 400 if malformed."""
    return check_event_id(environ.get("HTTP_X_LIGHTD_EVENT_ID"))


def history_limit(query: str) -> int:
    """The ``limit`` of ``GET /servers/<id>?limit=N``; 400 if out of range."""
    values = parse_qs(query, keep_blank_values=True).get("limit")
    if not values:
        return _HISTORY_LIMIT
    raw = values[-1]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6):
        raw = "0"
    limit = int(raw)
    if not 1 <= limit <= _MAX_HISTORY_LIMIT:
        raise invalid(f"limit: must be a whole number from 1 to {_MAX_HISTORY_LIMIT}")
    return limit


_NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


@attrs.frozen
class ServerFilter:
    """What ``GET /servers`` (and ``/servers.csv``) was asked to list."""

    after: str = ""
    limit: Optional[int] = None
    status: Optional[str] = None
    node: Optional[str] = None
    prefix: Optional[str] = None


def _last(params: dict[str, list[str]], name: str) -> Optional[str]:
    values = params.get(name)
    return values[-1] if values else None


def _limit(raw: Optional[str], most: int) -> Optional[int]:
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6):
        raw = "0"
    limit = int(raw)
    if not 1 <= limit <= most:
        raise invalid(f"limit: must be a whole number from 1 to {most}")
    return limit


def servers_query(query: str) -> ServerFilter:
    """The filters of ``GET /servers?status=&node=&prefix=&after=&limit=``; 400 naming a bad one."""
    params = parse_qs(query, keep_blank_values=True)
    after = _last(params, "after") or ""
    if len(after) > MAX_SERVER_ID_LENGTH:
        raise invalid(f"after: must be a server id of at most {MAX_SERVER_ID_LENGTH} characters")
    status = _last(params, "status")
    if status is not None and status not in _STATUSES:
        raise invalid("status: must be one of installing, ready, failed")
    node = _last(params, "node")
    if node is not None and not _NODE_NAME.fullmatch(node):
        raise invalid("node: must be a node name, 1 to 64 characters of A-Z a-z 0-9 . _ -")
    prefix = _last(params, "prefix")
    if prefix is not None and not (
        0 < len(prefix) <= MAX_SERVER_ID_LENGTH and prefix.isprintable()
    ):
        raise invalid(
            f"prefix: must be 1 to {MAX_SERVER_ID_LENGTH} printable characters of a server id"
        )
    return ServerFilter(
        after=after,
        limit=_limit(_last(params, "limit"), _MAX_HISTORY_LIMIT),
        status=status,
        node=node,
        prefix=prefix,
    )


def usage_query(query: str) -> tuple[Optional[int], int]:
    """``before`` (an event's id) and ``limit`` of ``GET /servers/ID/usage``; 400 if bad."""
    params = parse_qs(query, keep_blank_values=True)
    raw = _last(params, "before")
    before: Optional[int] = None
    if raw is not None:
        if not (raw.isascii() and raw.isdigit() and 0 < len(raw) <= 18):
            raise invalid("before: must be the id of a billing event (a whole number)")
        before = int(raw)
    limit = _limit(_last(params, "limit"), _MAX_HISTORY_LIMIT)
    return before, 100 if limit is None else limit


def parse_batch(doc: Any, most: int) -> list[Any]:
    """
    Check the outside of a ``POST /updates`` body: its ``updates`` list.

    Returns each item as sent (checked alone later). 400 if there is none or
    two of one server; 413 beyond *most* items.
    """
    if not isinstance(doc, dict):
        raise invalid("body: must be a JSON object")
    items = doc.get("updates")
    if not isinstance(items, list):
        raise invalid("updates: must be a list of updates")
    if not items:
        raise invalid("updates: must hold at least one update")
    if len(items) > most:
        raise RequestError(413, "too_large", f"updates: more than {most} in one request")
    seen: set[tuple[object, object]] = set()
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("server"), str):
            kind = "billing" if item.get("event") == "billing" else "update"
            key = (kind, item["server"])
            if key in seen:
                raise invalid(
                    "updates: two updates of one server in one request; send the later one "
                    "after the first is answered"
                )
            seen.add(key)
    return items
