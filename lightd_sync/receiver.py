"""
The reference remote: a WSGI application that takes Lightd's updates and keeps them in SQLite.

It implements the contract's two endpoints, ``GET /health`` and
``POST /update``, plus two to read what arrived: ``GET /servers`` (the latest
state of every server) and ``GET /servers/<id>`` (one server's history).
Every request needs ``Authorization: Bearer <token>``; every body is
validated; every client is rate-limited; every attempt is audited. Errors are
JSON ``{"success": false, "error": "..."}`` naming the field at fault, and
never echo what was sent.

An update may carry the ``X-Lightd-Event-Id`` header (an extension, at most 64
printable ASCII characters): it is stored, and an update whose id its server
already sent is acknowledged without being stored twice.

Each audit line is a JSON object with ``ts`` (RFC 3339, UTC), ``client``,
``method``, ``path``, ``server`` (or null), ``status`` and ``outcome``: one of
``ok``, ``stored``, ``duplicate``, ``unauthorized``, ``invalid`` (400, 411,
415), ``too_large``, ``not_found``, ``method_not_allowed``, ``rate_limited``,
``unavailable`` (503: storage failed or closed) or ``error`` (500: a bug,
logged to ``lightd_sync.receiver``); plus ``error`` and ``event_id`` when
there are any.

Serve it with any WSGI server; the receiver command and the tests use the
standard library's, through :func:`serve`:

>>> from lightd_sync import receiver
>>> from lightd_sync.receiver import serve
>>> app = receiver.create_app("lightd_ad2f7fc49ed640429c450e14ed07c8d5")
>>> with app, serve(app) as server:
...     server.url.startswith("http://127.0.0.1:")
True
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Callable, Optional, Union

import attrs

from ._auth import bearer_matches
from ._exceptions import ConfigError, LightdSyncError
from ._logutil import get_logger
from ._model import server_id_problem
from ._ratelimit import RateLimiter
from ._receiver_audit import AuditLog, AuditTarget, rfc3339
from ._receiver_store import ReceiverStore
from ._receiver_wire import (
    RequestError,
    event_id,
    history_limit,
    invalid,
    media_type,
    parse_json,
    parse_update,
    read_exactly,
)
from ._wsgi import StartResponse, WSGIEnvironment, WsgiServer, serve

__all__ = ["ReceiverApp", "ReceiverStore", "WsgiServer", "create_app", "serve"]

log = get_logger("receiver")

_ROUTES = {"/health": "GET", "/update": "POST", "/servers": "GET"}
_SERVERS = "/servers/"
_HEADERS = [
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
]


@attrs.define
class _Exchange:
    """What one request was and what became of it: the audit line."""

    client: str
    method: str
    path: str
    server: Optional[str] = None
    event_id: Optional[str] = None
    outcome: str = "error"
    status: int = 500
    error: Optional[str] = None

    def record(self, token: str) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "ts": rfc3339(time.time()),
            "client": self.client,
            "method": self.method[:32],
            "path": self.path,
            "server": self.server,
            "outcome": self.outcome,
            "status": self.status,
        }
        if self.event_id is not None:
            fields["event_id"] = self.event_id
        if self.error is not None:
            fields["error"] = self.error
        # Whatever a client put in the path (or anywhere), the token is never written.
        for key, value in fields.items():
            if isinstance(value, str) and token in value:
                fields[key] = value.replace(token, "<token>")
        fields["path"] = fields["path"][:512]
        return fields


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_token(token: object) -> str:
    # Never echo the value: it is the secret.
    if not isinstance(token, str) or not token:
        raise ConfigError("token: expected a non-empty string")
    if not (token.isascii() and token.isprintable()) or any(ch.isspace() for ch in token):
        raise ConfigError("token: must be printable ASCII without whitespace")
    return token


class ReceiverApp:
    """
    The receiver as a WSGI application; build it with :func:`create_app`.

    Thread-safe: a threading server may call it from many threads at once.
    Close it (or use it as a context manager) to close the database and the
    audit file; requests that need the store are answered 503 after that.

    Attributes:
        store: The :class:`ReceiverStore` holding what arrived.
        max_body: The largest body accepted, in bytes.
    """

    def __init__(
        self,
        token: str,
        *,
        db_path: Union[str, os.PathLike[str], None] = None,
        rate: float = 50.0,
        burst: int = 200,
        audit: AuditTarget = None,
        max_body: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token = _check_token(token)
        self._token_bytes = token.encode("ascii")
        if not (_is_number(rate) and rate > 0):  # math.inf allowed: no limit
            raise ConfigError(f"rate: expected a number > 0, got {rate!r}")
        if not (type(burst) is int and burst >= 1):
            raise ConfigError(f"burst: expected a whole number >= 1, got {burst!r}")
        if not (type(max_body) is int and max_body >= 1):
            raise ConfigError(f"max_body: expected a whole number >= 1, got {max_body!r}")
        if not callable(clock):
            raise ConfigError(f"clock: expected a callable, got {clock!r}")
        self.max_body = max_body
        self._limiter = RateLimiter(rate, burst, clock=clock)
        self._audit = AuditLog(audit)
        try:
            self.store = ReceiverStore(db_path)
        except BaseException:
            self._audit.close()
            raise

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Answer one request (the WSGI protocol)."""
        exchange = _Exchange(
            client=str(environ.get("REMOTE_ADDR") or "-"),
            method=str(environ.get("REQUEST_METHOD") or ""),
            path=str(environ.get("PATH_INFO") or ""),
        )
        headers: list[tuple[str, str]] = []
        try:
            status, doc = self._handle(environ, exchange)
        except RequestError as reject:
            status, headers = reject.status, reject.headers
            doc = {"success": False, "error": reject.message}
            exchange.outcome, exchange.error = reject.outcome, reject.message
        except Exception:  # a bug: log it, answer 500, keep serving
            if not sys.is_finalizing():
                log.exception("error handling %s %.200r", exchange.method, exchange.path)
            status = 500
            doc = {"success": False, "error": "internal error; see the receiver's log"}
            exchange.outcome, exchange.error = "error", doc["error"]
        exchange.status = status
        self._audit.write(exchange.record(self._token))
        body = json.dumps(doc, separators=(",", ":")).encode("ascii")
        headers = [*_HEADERS, ("Content-Length", str(len(body))), *headers]
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [body]

    def _handle(self, environ: WSGIEnvironment, exchange: _Exchange) -> tuple[int, Any]:
        wait = self._limiter.acquire(exchange.client)
        if wait > 0:
            retry = str(max(1, math.ceil(wait)))
            raise RequestError(
                429, "rate_limited", "too many requests; retry later", [("Retry-After", retry)]
            )
        if not self._authorized(environ.get("HTTP_AUTHORIZATION")):
            raise RequestError(
                401,
                "unauthorized",
                "missing or invalid bearer token; verify that the tokens match on both sides",
                [("WWW-Authenticate", 'Bearer realm="lightd-sync"')],
            )
        path, method = exchange.path, exchange.method
        allowed = _ROUTES.get(path) or ("GET" if path.startswith(_SERVERS) else None)
        if allowed is None:
            raise RequestError(404, "not_found", "no such endpoint")
        if method != allowed:
            raise RequestError(
                405,
                "method_not_allowed",
                f"method not allowed; use {allowed}",
                [("Allow", allowed)],
            )
        if path == "/update":
            return self._update(environ, exchange)
        exchange.outcome = "ok"
        if path == "/health":
            return 200, {"status": 200, "endpoint": "active"}
        if path == "/servers":
            return 200, {"servers": self._storage(self.store.latest)}
        return self._history(path[len(_SERVERS) :], environ, exchange)

    def _authorized(self, header: object) -> bool:
        return bearer_matches(header, self._token_bytes)

    def _read_body(self, environ: WSGIEnvironment) -> bytes:
        kind, params = media_type(str(environ.get("CONTENT_TYPE") or ""))
        if kind != "application/json":
            raise RequestError(415, "invalid", "Content-Type: must be application/json")
        if params.get("charset", "utf-8") not in ("utf-8", "utf8"):
            raise RequestError(415, "invalid", "Content-Type: the charset must be utf-8")
        stream = environ["wsgi.input"]
        too_large = RequestError(413, "too_large", f"body: larger than {self.max_body} bytes")
        raw = str(environ.get("CONTENT_LENGTH") or "").strip()
        if not raw:
            # Only a server that ends the input itself (de-chunking) may omit
            # the length; reading an HTTP/1.1 socket to its end would hang.
            if not environ.get("wsgi.input_terminated"):
                raise RequestError(411, "invalid", "Content-Length: required")
            body = bytes(stream.read(self.max_body + 1))
            if len(body) > self.max_body:
                raise too_large
            return body
        if not (raw.isascii() and raw.isdigit()):
            raise invalid("Content-Length: must be a whole number")
        if len(raw) > 15 or int(raw) > self.max_body:
            raise too_large  # without reading a byte of it
        return read_exactly(stream, int(raw))

    def _update(self, environ: WSGIEnvironment, exchange: _Exchange) -> tuple[int, Any]:
        update = parse_update(parse_json(self._read_body(environ)))
        exchange.server = update.server
        exchange.event_id = eid = event_id(environ)
        if eid is not None:
            update = attrs.evolve(update, event_id=eid)
        stored = self._storage(lambda: self.store.add(update))
        exchange.outcome = "stored" if stored else "duplicate"
        return 200, {"success": True}

    def _history(self, tail: str, environ: WSGIEnvironment, exchange: _Exchange) -> tuple[int, Any]:
        try:  # PEP 3333: the path arrives as bytes decoded as latin-1
            server = tail.encode("latin-1").decode("utf-8")
        except UnicodeEncodeError:
            server = tail
        except UnicodeDecodeError:
            server = ""
        limit = history_limit(str(environ.get("QUERY_STRING") or ""))
        if server_id_problem(server) is None:
            exchange.server = server
            history = self._storage(lambda: self.store.history(server, limit))
            if history:
                return 200, {"server": server, "history": history}
        raise RequestError(404, "not_found", "server: no updates stored for this id")

    def _storage(self, operation: Callable[[], Any]) -> Any:
        try:
            return operation()
        except sqlite3.Error as exc:
            log.error("the receiver's database failed: %s", exc)
            raise RequestError(
                503, "unavailable", "storage unavailable; retry later", [("Retry-After", "1")]
            ) from None
        except LightdSyncError:  # closed
            raise RequestError(503, "unavailable", "the receiver is closed") from None

    def close(self) -> None:
        """Close the store and the audit log. Calling it again does nothing."""
        self.store.close()
        self._audit.close()

    def __enter__(self) -> ReceiverApp:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ReceiverApp store={self.store!r}>"


def create_app(
    token: str,
    *,
    db_path: Union[str, os.PathLike[str], None] = None,
    rate: float = 50.0,
    burst: int = 200,
    audit: AuditTarget = None,
    max_body: int = 65536,
    clock: Callable[[], float] = time.monotonic,
) -> ReceiverApp:
    """
    Build the receiver's WSGI application.

    Args:
        token: The shared secret clients must send as ``Authorization: Bearer <token>``.
        db_path: SQLite file to keep updates in (created if missing); ``None``
            keeps them in memory until :meth:`ReceiverApp.close`.
        rate: Requests per second each client address may make on average
            (``math.inf``: no limit); beyond, 429 with ``Retry-After``.
        burst: Requests a client may make at once before *rate* applies.
        audit: Where to write one JSON line per request: a file path
            (appended to), an open text file, ``"-"`` for stderr, or ``None``.
            Lines never contain the token.
        max_body: Largest ``POST /update`` body accepted, in bytes; beyond, 413.
        clock: Monotonic seconds for the rate limiter (tests inject their own).

    Raises:
        ConfigError: An argument is invalid or the audit file cannot be opened.
        sqlite3.Error: The database cannot be opened.
    """
    return ReceiverApp(
        token,
        db_path=db_path,
        rate=rate,
        burst=burst,
        audit=audit,
        max_body=max_body,
        clock=clock,
    )
