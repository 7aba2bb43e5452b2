"""The receiver's WSGI application, :class:`ReceiverApp` (see :mod:`lightd_sync.receiver`)."""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Callable, Optional, Union

import attrs

from .._exceptions import ConfigError, LightdSyncError
from .._forksafe import after_fork_in_child
from .._logutil import get_logger
from .._model import Event, Update
from .audit import AuditLog, AuditTarget, Scrubber, rfc3339
from .background import AlertSender, Ticker
from .listing import Listing, Stream, iso
from .metrics import render_receiver_metrics
from .nodes import Heartbeats, Principals, load_nodes, parse_nodes, token_problem
from .postgres import PostgresStore, is_postgres_url
from .ratelimit import RateLimiter
from .store import DEFAULT_HISTORY, ReceiverStore
from .wire import (
    RequestError,
    check_event_id,
    event_id,
    media_type,
    parse_batch,
    parse_event,
    parse_json,
    read_exactly,
    servers_query,
)

__all__ = ["DEFAULT_BATCH_MAX", "OPERATOR_ENVIRON", "ReceiverApp", "Store", "iso"]

log = get_logger("receiver")

#: Either store: they have the same methods.
Store = Union[ReceiverStore, PostgresStore]

#: Routes a node's token may use (the contract, and the batch extension).
_SEND = {"/health": "GET", "/update": "POST", "/updates": "POST"}
#: Routes that read, for the operator.
_READ = {"/servers": "GET", "/servers.csv": "GET", "/nodes": "GET", "/summary": "GET",
         "/metrics": "GET"}  # fmt: skip
_SERVERS = "/servers/"
#: The environ key the status page's middleware sets (to True) for a logged-in operator.
OPERATOR_ENVIRON = "lightd_sync.operator"
#: Items a batch may hold unless told otherwise.
DEFAULT_BATCH_MAX = 500
#: Largest body of a ``POST /updates`` (a batch), in bytes.
DEFAULT_BATCH_BODY = 8 << 20
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
    node: Optional[str] = None
    event_id: Optional[str] = None
    outcome: str = "error"
    status: int = 500
    error: Optional[str] = None
    items: Optional[dict[str, int]] = None

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
        if self.node is not None:
            fields["node"] = self.node
        if self.items is not None:
            fields["items"] = self.items
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


def _check_args(
    *,
    rate: float,
    burst: int,
    max_body: int,
    batch_max: int,
    max_batch_body: int,
    stale_after: float,
    stuck_after: float,
    retain_days: Optional[float],
    webhooks: Union[str, Sequence[str]],
    clock: object,
) -> list[str]:
    """Check the receiver's arguments (ConfigError naming the bad one); the webhooks as a list."""
    if not (_is_number(rate) and rate > 0):  # math.inf allowed: no limit
        raise ConfigError(f"rate: expected a number > 0, got {rate!r}")
    if not (type(burst) is int and burst >= 1):
        raise ConfigError(f"burst: expected a whole number >= 1, got {burst!r}")
    if not (type(max_body) is int and max_body >= 1):
        raise ConfigError(f"max_body: expected a whole number >= 1, got {max_body!r}")
    if not (type(batch_max) is int and 0 <= batch_max <= 10_000):
        raise ConfigError(f"batch_max: expected a whole number from 0 to 10000, got {batch_max!r}")
    if not (type(max_batch_body) is int and max_batch_body >= 1):
        raise ConfigError(f"max_batch_body: expected a whole number >= 1, got {max_batch_body!r}")
    for name, value in (("stale_after", stale_after), ("stuck_after", stuck_after)):
        if not (_is_number(value) and 0 < value < math.inf):
            raise ConfigError(f"{name}: expected a number of seconds > 0, got {value!r}")
    if retain_days is not None and not (_is_number(retain_days) and 0 < retain_days < math.inf):
        raise ConfigError(f"retain_days: expected a number of days > 0, got {retain_days!r}")
    if isinstance(webhooks, str):
        webhooks = [webhooks]
    for url in webhooks:
        if not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            raise ConfigError("webhook: expected an http:// or https:// URL")
    if not callable(clock):
        raise ConfigError(f"clock: expected a callable, got {clock!r}")
    return list(webhooks)


class ReceiverApp:
    """
    The receiver as a WSGI application; build it with :func:`create_app`.

    Thread-safe: a threading server may call it from many threads at once,
    and several processes may share one database. Close it (or use it as a
    context manager) to close the database and the audit file and to stop its
    threads; requests that need the store are answered 503 after that.

    Attributes:
        store: The store holding what arrived: a :class:`ReceiverStore`
            (SQLite) or, for a ``postgresql://`` URL, a store with the same methods.
        max_body: The largest body accepted (a batch's), in bytes.
        max_update_body: The largest ``POST /update`` body accepted, in bytes.
        batch_max: Items a ``POST /updates`` may hold (offered in ``/health``); 0: no batches.
        stale_after: Seconds after its last request a node is ``stale``.
        stuck_after: Seconds in ``installing`` after which a server is ``stuck``.
        stored: Updates this app stored (not counting duplicates, nor what the
            database held before).
        billing_stored: Billing events this app stored.
    """

    def __init__(
        self,
        token: Optional[str],
        *,
        db_path: Union[str, os.PathLike[str], None] = None,
        rate: float = 200.0,
        burst: int = 1000,
        audit: AuditTarget = None,
        max_body: int = 65536,
        clock: Callable[[], float] = time.monotonic,
        history: Optional[int] = DEFAULT_HISTORY,
        nodes: Optional[Mapping[str, str]] = None,
        operator_token: Optional[str] = None,
        stale_after: float = 90.0,
        stuck_after: float = 1800.0,
        webhooks: Sequence[str] = (),
        retain_days: Optional[float] = None,
        batch_max: int = DEFAULT_BATCH_MAX,
        max_batch_body: int = DEFAULT_BATCH_BODY,
    ) -> None:
        secrets: list[str] = []
        if nodes is None:
            secrets.append(_check_token(token))
        elif token is not None:
            raise ConfigError("token: give either one token or nodes, not both")
        if operator_token is not None:
            problem = token_problem(operator_token)
            if problem is not None:
                raise ConfigError(f"operator token: {problem}")
            secrets.append(operator_token)
        elif nodes is not None:
            raise ConfigError(
                "operator token: required with nodes (node tokens only send; reading needs it)"
            )
        node_map = None if nodes is None else parse_nodes(nodes, operator=operator_token)
        if node_map is not None:
            secrets.extend(node_map.values())
        self._scrub = Scrubber(secrets)
        self._principals = Principals(single=token, operator=operator_token, nodes=node_map)
        webhooks = _check_args(
            rate=rate,
            burst=burst,
            max_body=max_body,
            batch_max=batch_max,
            max_batch_body=max_batch_body,
            stale_after=stale_after,
            stuck_after=stuck_after,
            retain_days=retain_days,
            webhooks=webhooks,
            clock=clock,
        )
        self.max_update_body = max_body
        self.batch_max = batch_max
        self.max_body = max(max_body, max_batch_body) if batch_max else max_body
        self.stale_after = float(stale_after)
        self.stuck_after = float(stuck_after)
        self.retain_days = retain_days
        self._limiter = RateLimiter(rate, burst, clock=clock)
        self._heartbeats = Heartbeats()
        # Guards _counters, stored and billing_stored: what this app saw, for
        # /metrics and the stop line (request threads count, any thread reads).
        self._counters_lock = threading.Lock()
        self._counters: dict[tuple[str, str], int] = {}
        self.stored = 0  # updates this app stored (under _counters_lock)
        self.billing_stored = 0  # billing events this app stored (under _counters_lock)
        after_fork_in_child(self._after_fork)
        self._audit = AuditLog(audit)
        try:
            self.store: Store = open_store(db_path, history)
        except BaseException:
            self._audit.close()
            raise
        self.store.webhooks = tuple(dict.fromkeys(webhooks))
        self._listing = Listing(  # stuck_after is read at each request: it may change
            self.store, stuck_after=lambda: self.stuck_after, storage=self._storage
        )
        self._ticker: Optional[Ticker] = None
        self._sender: Optional[AlertSender] = None
        if node_map is not None or retain_days is not None:
            self._ticker = Ticker(
                self.store,
                self._heartbeats,
                names=lambda: self._principals.names,
                stale_after=self.stale_after,
                retain_days=retain_days,
                on_stale=self._wake_sender,
            )
            self._ticker.start()
        if self.store.webhooks:
            self._sender = AlertSender(self.store)
            self._sender.start()

    def _after_fork(self) -> None:
        self._counters_lock = threading.Lock()

    def _wake_sender(self, _names: Any = None) -> None:
        if self._sender is not None:
            self._sender.wake()

    # -- nodes -------------------------------------------------------------------

    @property
    def node_names(self) -> tuple[str, ...]:
        """The nodes served now (empty without nodes).

        .. versionadded:: 0.2.0
        """
        return self._principals.names

    def set_nodes(self, nodes: Mapping[str, str]) -> None:
        """
        Serve this set of nodes from now on (a node added, a token revoked).

        Raises:
            ConfigError: The set is invalid, naming the node and the problem;
                the old set stays.

        .. versionadded:: 0.2.0
        """
        if not self._principals.with_nodes:
            raise ConfigError("nodes: this receiver was started with one token, not nodes")
        checked = parse_nodes(nodes, operator=None)
        for name, token in checked.items():
            if self._principals.is_operator(token):
                raise ConfigError(f"nodes: node {name!r} has the operator's token; give it its own")
        self._scrub.add(checked.values())
        self._principals.replace(checked)

    def reload_nodes(self, path: str) -> None:
        """Re-read the nodes file at *path*; on error the old set stays (ConfigError says why).

        .. versionadded:: 0.2.0
        """
        self.set_nodes(load_nodes(path))

    # -- counters ----------------------------------------------------------------

    def _count(self, kind: str, label: str, n: int = 1) -> None:
        with self._counters_lock:
            key = (kind, label)
            self._counters[key] = self._counters.get(key, 0) + n

    def counters(self) -> dict[tuple[str, str], int]:
        """What this app counted: ``(kind, label) -> n``.

        .. versionadded:: 0.2.0
        """
        with self._counters_lock:
            return dict(self._counters)

    # -- WSGI ----------------------------------------------------------------------

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
            self._count("rejected", reject.outcome)
        except Exception as exc:  # a bug: log it, answer 500, keep serving
            self._log_bug(exchange, exc)
            status = 500
            doc = {"success": False, "error": "internal error; see the receiver's log"}
            exchange.outcome, exchange.error = "error", doc["error"]
            self._count("rejected", "error")
        exchange.status = status
        if self._audit.enabled:
            self._audit.write(exchange.record(self._scrub))
        if isinstance(doc, _Raw):
            body = doc.body
            headers = [
                ("Content-Type", doc.kind),
                *_HEADERS[1:],
                ("Content-Length", str(len(body))),
            ]
            start_response(f"{status} {HTTPStatus(status).phrase}", headers)
            return [body]
        if isinstance(doc, Stream):
            headers = [("Content-Type", doc.kind), *_HEADERS[1:]]
            start_response(f"{status} {HTTPStatus(status).phrase}", headers)
            return doc.chunks
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
        who = self._principals.who(environ.get("HTTP_AUTHORIZATION"))
        page_operator = environ.get(OPERATOR_ENVIRON) is True
        if who is None and page_operator:
            who = ("operator", None)
        kind, node = who if who is not None else ("anonymous", None)
        key = (
            node if node is not None else ("\0operator" if kind == "operator" else exchange.client)
        )
        wait = self._limiter.acquire(key)
        if wait > 0:
            retry = str(max(1, math.ceil(wait)))
            raise RequestError(
                429, "rate_limited", "too many requests; retry later", [("Retry-After", retry)]
            )
        if who is None:
            raise RequestError(
                401,
                "unauthorized",
                "missing or invalid bearer token; verify that the tokens match on both sides",
                [("WWW-Authenticate", 'Bearer realm="lightd-sync"')],
            )
        if node is not None:
            self._heartbeats.heard(node, time.time())
        exchange.node = node
        path, method = exchange.path, exchange.method
        sending = path in _SEND and (path != "/updates" or self.batch_max > 0)
        allowed = _SEND.get(path) if sending else _READ.get(path)
        if allowed is None and path.startswith(_SERVERS):
            allowed = "GET"
        if allowed is None:
            raise RequestError(404, "not_found", "no such endpoint")
        if method != allowed:
            raise RequestError(
                405,
                "method_not_allowed",
                f"method not allowed; use {allowed}",
                [("Allow", allowed)],
            )
        if sending:
            if kind == "operator" and path != "/health":
                raise RequestError(
                    403, "forbidden", "the operator token reads; updates come with a node's token"
                )
        elif kind == "node":
            raise RequestError(
                403,
                "forbidden",
                "a node's token may only send (/health, /update, /updates); "
                "reading needs the operator token",
            )
        if path == "/update":
            return self._update(environ, exchange, node)
        if path == "/updates":
            return self._updates(environ, exchange, node)
        if path == "/health":
            exchange.outcome = "ok"
            doc: dict[str, Any] = {"status": 200, "endpoint": "active"}
            if self.batch_max:
                doc["batch"] = {"max": self.batch_max}
            return 200, doc
        query = str(environ.get("QUERY_STRING") or "")
        exchange.outcome = "ok"
        if path == "/servers":
            return self._listing.servers(servers_query(query))
        if path == "/servers.csv":
            return self._listing.servers_csv(servers_query(query))
        if path == "/nodes":
            return 200, {"nodes": self._storage(self.nodes)}
        if path == "/summary":
            return 200, self._storage(self.summary)
        if path == "/metrics":
            text = self._storage(self.metrics_text)
            return 200, _Raw(text.encode("utf-8"), "text/plain; version=0.0.4; charset=utf-8")
        return self._listing.server(path[len(_SERVERS) :], query, exchange)

    def _read_body(self, environ: dict[str, Any], limit: int) -> bytes:
        kind, params = media_type(str(environ.get("CONTENT_TYPE") or ""))
        if kind != "application/json":
            raise RequestError(415, "invalid", "Content-Type: must be application/json")
        if params.get("charset", "utf-8") not in ("utf-8", "utf8"):
            raise RequestError(415, "invalid", "Content-Type: the charset must be utf-8")
        stream = environ["wsgi.input"]
        too_large = RequestError(413, "too_large", f"body: larger than {limit} bytes")
        raw = str(environ.get("CONTENT_LENGTH") or "").strip()
        if not raw:
            # Without a length only a chunked body can follow, and only a server
            # that ends the input itself (de-chunking) may pass it on so:
            # reading an HTTP/1.1 socket to its end would hang.
            if not (environ.get("HTTP_TRANSFER_ENCODING") and environ.get("wsgi.input_terminated")):
                raise RequestError(411, "invalid", "Content-Length: required")
            body = bytes(stream.read(limit + 1))
            if len(body) > limit:
                raise too_large
            return body
        if not (raw.isascii() and raw.isdigit()):
            raise RequestError(400, "invalid", "Content-Length: must be a whole number")
        if len(raw) > 15 or int(raw) > limit:
            raise too_large  # without reading a byte of it
        return read_exactly(stream, int(raw))

    def _stored(self, events: Sequence[Event], stored: Sequence[bool], node: Optional[str]) -> None:
        with self._counters_lock:
            counters = self._counters
            for event, was in zip(events, stored):
                if not was:
                    continue
                if isinstance(event, Update):
                    self.stored += 1
                    label = event.status.value
                else:
                    self.billing_stored += 1
                    label = "billing"
                for key in (("status", label), ("node", node or "")):
                    counters[key] = counters.get(key, 0) + 1

    def _update(
        self, environ: dict[str, Any], exchange: _Exchange, node: Optional[str]
    ) -> tuple[int, Any]:
        doc = parse_json(self._read_body(environ, self.max_update_body))
        exchange.event_id = eid = event_id(environ)
        event = parse_event(doc, eid)
        exchange.server = event.server
        stored = self._storage(lambda: self.store.add_many([event], node=node))
        self._stored([event], stored, node)
        if stored[0] and isinstance(event, Update) and event.status.value in ("failed", "ready"):
            self._wake_sender()
        exchange.outcome = "stored" if stored[0] else "duplicate"
        return 200, {"success": True}

    def _updates(
        self, environ: dict[str, Any], exchange: _Exchange, node: Optional[str]
    ) -> tuple[int, Any]:
        items = parse_batch(parse_json(self._read_body(environ, self.max_body)), self.batch_max)
        results: list[dict[str, Any]] = []
        events: list[Event] = []
        where: list[int] = []
        for i, item in enumerate(items):
            try:
                eid = check_event_id(item.get("event_id") if isinstance(item, dict) else None,
                                     "event_id")  # fmt: skip
                event = parse_event(item, eid)
            except RequestError as refused:
                results.append({"success": False, "error": refused.message})
                self._count("rejected", "invalid_item")
                continue
            results.append({"success": True})
            events.append(event)
            where.append(i)
        stored = self._storage(lambda: self.store.add_many(events, node=node)) if events else []
        self._stored(events, stored, node)
        if any(isinstance(e, Update) for e in events):
            self._wake_sender()
        taken = sum(stored)
        exchange.outcome = "stored" if taken else "duplicate" if events else "invalid"
        exchange.items = {
            "sent": len(items),
            "stored": taken,
            "refused": len(items) - len(events),
        }
        if len(events) == len(items):
            return 200, {"success": True}
        return 200, {"success": True, "results": results}

    def nodes(self) -> list[dict[str, Any]]:
        """What ``GET /nodes`` lists: each node served, with its state (see the module).

        .. versionadded:: 0.2.0
        """
        known = self.store.nodes()
        heard = self._heartbeats.last()
        now = time.time()
        names = self._principals.names if self._principals.with_nodes else tuple(sorted(known))
        out = []
        for name in names:
            entry = known.get(name, {"last_seen": None, "servers": 0, "cost_24h": 0.0})
            seen = max(
                (t for t in (entry["last_seen"], heard.get(name)) if t is not None), default=None
            )
            state = (
                "never_seen"
                if seen is None
                else "online"
                if now - seen <= self.stale_after
                else "stale"
            )
            out.append(
                {
                    "name": name,
                    "state": state,
                    "last_seen": iso(seen),
                    "servers": entry["servers"],
                    "cost_24h": entry["cost_24h"],
                }
            )
        return out

    def summary(self) -> dict[str, Any]:
        """What ``GET /summary`` answers: the fleet at a glance.

        .. versionadded:: 0.2.0
        """
        counts, stuck = self.store.status_counts(time.time() - self.stuck_after)
        by_state = {"online": 0, "stale": 0, "never_seen": 0}
        for node in self.nodes():
            by_state[node["state"]] += 1
        return {
            "counts": counts,
            "stuck": stuck,
            "nodes": by_state,
            "stale_after": self.stale_after,
            "stuck_after": self.stuck_after,
        }

    def metrics_text(self) -> str:
        """What ``GET /metrics`` answers: Prometheus text exposition 0.0.4.

        .. versionadded:: 0.2.0
        """
        counts, stuck = self.store.status_counts(time.time() - self.stuck_after)
        return render_receiver_metrics(
            counters=self.counters(),
            nodes=self.nodes(),
            servers=counts,
            stuck=stuck,
            alerts=self.store.alert_counts(),
            resources=self.store.resources(),
        )

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
        """Stop the threads, close the store and the audit log. Calling it again does nothing."""
        for worker in (self._ticker, self._sender):
            if worker is not None:
                worker.stop()
        self.store.close()
        self._audit.close()

    def __enter__(self) -> ReceiverApp:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ReceiverApp store={self.store!r}>"


@attrs.frozen
class _Raw:
    body: bytes
    kind: str
