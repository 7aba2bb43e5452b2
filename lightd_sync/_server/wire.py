"""
The receiver's wire rules: what a request must look like, checked one field at a time.

Every rule raises :class:`RequestError` with the status to answer and a
message naming the field at fault; no message ever echoes what was sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Optional
from urllib.parse import parse_qs

from .._model import MAX_SERVER_ID_LENGTH, Status, Update, server_id_problem

__all__ = [
    "RequestError",
    "event_id",
    "history_limit",
    "invalid",
    "media_type",
    "parse_json",
    "parse_update",
    "read_exactly",
    "servers_query",
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


def parse_update(doc: Any) -> Update:
    """Check a decoded body against the contract and return it as an :class:`Update`."""
    if not isinstance(doc, dict):
        raise invalid("body: must be a JSON object")
    event = doc.get("event")
    if not (type(event) is str and event == "update"):
        raise invalid('event: must be "update"')
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
        return Update(server, status)
    if "error" in doc:
        error, data = doc["error"], doc.get("data")
        if not (type(error) is str and error == "failed"):
            raise invalid('error: must be "failed"')
        if type(data) is not str:
            raise invalid("data: must be a string (the error message) in an error update")
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escaped in the JSON
            raise invalid("data: must be valid Unicode text") from None
        if "\0" in data:  # PostgreSQL's text cannot hold it; neither store takes it
            raise invalid("data: must not contain NUL characters")
        return Update(server, Status.FAILED, data)
    raise invalid("status: required (installing, ready or failed), or error with data")


def event_id(environ: dict[str, Any]) -> Optional[str]:
    """The ``X-Lightd-Event-Id`` extension header, if sent; 400 if malformed."""
    raw = environ.get("HTTP_X_LIGHTD_EVENT_ID")
    if raw is None or raw == "":
        return None
    if not (
        isinstance(raw, str) and len(raw) <= _MAX_EVENT_ID and raw.isascii() and raw.isprintable()
    ):
        raise invalid(
            f"X-Lightd-Event-Id: must be at most {_MAX_EVENT_ID} printable ASCII characters"
        )
    return raw


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


def servers_query(query: str) -> tuple[str, Optional[int]]:
    """``after`` and ``limit`` of ``GET /servers?after=ID&limit=N``; 400 if out of range."""
    params = parse_qs(query, keep_blank_values=True)
    after = params.get("after", [""])[-1]
    if len(after) > MAX_SERVER_ID_LENGTH:
        raise invalid(f"after: must be a server id of at most {MAX_SERVER_ID_LENGTH} characters")
    values = params.get("limit")
    if not values:
        return after, None
    raw = values[-1]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6):
        raw = "0"
    limit = int(raw)
    if not 1 <= limit <= _MAX_HISTORY_LIMIT:
        raise invalid(f"limit: must be a whole number from 1 to {_MAX_HISTORY_LIMIT}")
    return after, limit
