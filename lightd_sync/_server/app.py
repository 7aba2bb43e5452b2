"""The receiver's WSGI application, :class:`ReceiverApp` (see :mod:`lightd_sync.receiver`)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from typing import Any, Callable, Optional, Union

import attrs

from .._auth import bearer_matches
from .._exceptions import ConfigError, LightdSyncError
from .._logutil import get_logger
from .._model import server_id_problem
from .audit import AuditLog, AuditTarget, Scrubber, rfc3339
from .postgres import PostgresStore, is_postgres_url
from .ratelimit import RateLimiter
from .store import DEFAULT_HISTORY, ReceiverStore
from .wire import (
    RequestError,
    event_id,
    history_limit,
    media_type,
    parse_json,
    parse_update,
    read_exactly,
    servers_query,
)

__all__ = ["ReceiverApp", "Store"]

log = get_logger("receiver")

#: Either store: they have the same methods.
Store = Union[ReceiverStore, PostgresStore]

_ROUTES = {"/health": "GET", "/update": "POST", "/servers": "GET"}
_SERVERS = "/servers/"
_HEADERS = [
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
]
_PAGE = 500  # servers read from the store at a time while GET /servers streams


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

    def record(self, scrub: Scrubber) -> dict[str, Any]:
        # Whatever a client put anywhere, no 8 characters of the token are
        # written: scrub the whole value first, cut it short after.
        fields: dict[str, Any] = {
            "ts": rfc3339(time.time()),
            "client": scrub(self.client),
            "method": scrub(self.method)[:32],
            "path": scrub(self.path)[:512],
            "server": None if self.server is None else scrub(self.server),
            "outcome": self.outcome,
            "status": self.status,
        }
        if self.event_id is not None:
            fields["event_id"] = scrub(self.event_id)
        if self.error is not None:
            fields["error"] = scrub(self.error)
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


def open_store(target: Union[str, os.PathLike[str], None], history: Optional[int]) -> Store:
    """A :class:`PostgresStore` for a ``postgresql://`` URL, else a :class:`ReceiverStore`."""
    try:
        if is_postgres_url(target):
            assert isinstance(target, str)
            return PostgresStore(target, history=history)
        return ReceiverStore(target, history=history)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class ReceiverApp:
    """
    The receiver as a WSGI application; build it with :func:`create_app`.

    Thread-safe: a threading server may call it from many threads at once,
    and several processes may share one database. Close it (or use it as a
    context manager) to close the database and the audit file; requests that
    need the store are answered 503 after that.

    Attributes:
        store: The store holding what arrived: a :class:`ReceiverStore`
            (SQLite) or, for a ``postgresql://`` URL, a store with the same methods.
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
        history: Optional[int] = DEFAULT_HISTORY,
    ) -> None:
        self._token_bytes = _check_token(token).encode("ascii")
        self._scrub = Scrubber(token)
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
            self.store: Store = open_store(db_path, history)
        except BaseException:
            self._audit.close()
            raise

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
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
        except Exception as exc:  # a bug: log it, answer 500, keep serving
            self._log_bug(exchange, exc)
            status = 500
            doc = {"success": False, "error": "internal error; see the receiver's log"}
            exchange.outcome, exchange.error = "error", doc["error"]
        exchange.status = status
        if self._audit.enabled:
            self._audit.write(exchange.record(self._scrub))
        if isinstance(doc, Iterator):  # GET /servers, streamed
            start_response(f"{status} {HTTPStatus(status).phrase}", list(_HEADERS))
            return doc
        body = json.dumps(doc, separators=(",", ":")).encode("ascii")
        headers = [*_HEADERS, ("Content-Length", str(len(body))), *headers]
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [body]

    def _log_bug(self, exchange: _Exchange, exc: Exception) -> None:
        if sys.is_finalizing():
            return
        # The traceback holds messages that may quote the request: scrub it all.
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log.error(
            "error handling %s %s:\n%s",
            self._scrub(exchange.method)[:32],
            self._scrub(exchange.path)[:512],
            self._scrub(text),
        )

    def _handle(self, environ: dict[str, Any], exchange: _Exchange) -> tuple[int, Any]:
        wait = self._limiter.acquire(exchange.client)
        if wait > 0:
            retry = str(max(1, math.ceil(wait)))
            raise RequestError(
                429, "rate_limited", "too many requests; retry later", [("Retry-After", retry)]
            )
        if not bearer_matches(environ.get("HTTP_AUTHORIZATION"), self._token_bytes):
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
        if path == "/health":
            exchange.outcome = "ok"
            return 200, {"status": 200, "endpoint": "active"}
        if path == "/servers":
            return self._servers(environ, exchange)
        return self._history(path[len(_SERVERS) :], environ, exchange)

    def _read_body(self, environ: dict[str, Any]) -> bytes:
        kind, params = media_type(str(environ.get("CONTENT_TYPE") or ""))
        if kind != "application/json":
            raise RequestError(415, "invalid", "Content-Type: must be application/json")
        if params.get("charset", "utf-8") not in ("utf-8", "utf8"):
            raise RequestError(415, "invalid", "Content-Type: the charset must be utf-8")
        stream = environ["wsgi.input"]
        too_large = RequestError(413, "too_large", f"body: larger than {self.max_body} bytes")
        raw = str(environ.get("CONTENT_LENGTH") or "").strip()
        if not raw:
            # Without a length only a chunked body can follow, and only a server
            # that ends the input itself (de-chunking) may pass it on so:
            # reading an HTTP/1.1 socket to its end would hang.
            if not (environ.get("HTTP_TRANSFER_ENCODING") and environ.get("wsgi.input_terminated")):
                raise RequestError(411, "invalid", "Content-Length: required")
            body = bytes(stream.read(self.max_body + 1))
            if len(body) > self.max_body:
                raise too_large
            return body
        if not (raw.isascii() and raw.isdigit()):
            raise RequestError(400, "invalid", "Content-Length: must be a whole number")
        if len(raw) > 15 or int(raw) > self.max_body:
            raise too_large  # without reading a byte of it
        return read_exactly(stream, int(raw))

    def _update(self, environ: dict[str, Any], exchange: _Exchange) -> tuple[int, Any]:
        update = parse_update(parse_json(self._read_body(environ)))
        exchange.server = update.server
        exchange.event_id = eid = event_id(environ)
        if eid is not None:
            update = attrs.evolve(update, event_id=eid)
        stored = self._storage(lambda: self.store.add(update))
        exchange.outcome = "stored" if stored else "duplicate"
        return 200, {"success": True}

    def _servers(self, environ: dict[str, Any], exchange: _Exchange) -> tuple[int, Any]:
        after, limit = servers_query(str(environ.get("QUERY_STRING") or ""))
        size = _PAGE if limit is None else min(_PAGE, limit)
        first = self._storage(lambda: self.store.latest_page(after, size))  # 503 while we can
        exchange.outcome = "ok"
        return 200, self._stream_servers(first, size, limit)

    def _stream_servers(
        self, page: dict[str, Any], size: int, limit: Optional[int]
    ) -> Iterator[bytes]:
        """``{"servers": {...}, "next": ID or null}``, a page of the store at a time."""
        yield b'{"servers":{'
        sent, last, separator = 0, None, b""
        while True:
            for server, state in page.items():
                yield separator + json.dumps(server).encode() + b":" + _compact(state)
                separator, last = b",", server
            sent += len(page)
            if len(page) < size or (limit is not None and sent >= limit):
                break
            if limit is not None:
                size = min(size, limit - sent)
            errors: tuple[type[Exception], ...] = (*self.store.errors, LightdSyncError)
            try:
                page = self.store.latest_page(last or "", size)
            except errors as exc:
                # The status is sent: end the body short, so that it is not valid JSON.
                log.error("the receiver's database failed while listing servers: %s", exc)
                return
        more = limit is not None and sent >= limit
        yield b'},"next":' + json.dumps(last if more else None).encode() + b"}"

    def _history(self, tail: str, environ: dict[str, Any], exchange: _Exchange) -> tuple[int, Any]:
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
                exchange.outcome = "ok"
                return 200, {"server": server, "history": history}
        raise RequestError(404, "not_found", "server: no updates stored for this id")

    def _storage(self, operation: Callable[[], Any]) -> Any:
        errors: tuple[type[Exception], ...] = self.store.errors
        try:
            return operation()
        except errors as exc:
            log.error("the receiver's database failed: %s", self._scrub(str(exc)))
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


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("ascii")
