"""
The receiver's read side for one server or many: ``GET /servers`` (JSON or CSV) and ``/servers/ID``.

:class:`Listing` reads the store a page at a time and streams the answer, so
listing 100,000 servers never holds them all. A database that fails in the
middle ends the body short, since the status line is sent already (and
logged): the JSON is then not valid, the CSV lacks its later rows. The app
owns the routes and the errors (``storage`` turns a database error into a
503 before any byte).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

import attrs

from .._exceptions import LightdSyncError
from .._logutil import get_logger
from .._model import BILLING_FIELDS, server_id_problem
from .audit import rfc3339
from .wire import RequestError, ServerFilter, history_limit, usage_query

if TYPE_CHECKING:
    from .app import Store

__all__ = ["Listing", "Named", "Stream", "iso"]

log = get_logger("receiver")

_CSV_COLUMNS = ("server", "node", "status", "error", "data", "updated", "stuck", "usage_at",
                *BILLING_FIELDS)  # fmt: skip
_PAGE = 500  # servers read from the store at a time while GET /servers streams


def iso(timestamp: Optional[float]) -> Optional[str]:
    """Seconds since the epoch as ISO 8601 in UTC (``2026-12-06T12:00:00.000Z``), or None."""
    return None if timestamp is None else rfc3339(float(timestamp))


class Named(Protocol):
    """The request's record (the audit line), which learns the server it is about."""

    server: Optional[str]


class Listing:
    """
    The read routes of one store: a server's state as shown, pages of them, one server's history.

    Args:
        store: The receiver's store (SQLite or PostgreSQL).
        stuck_after: Seconds in ``installing`` after which a server is shown as stuck,
            asked at each request (the app's ``stuck_after`` may change).
        storage: Runs a store operation, a database error becoming a 503.
    """

    def __init__(
        self,
        store: Store,
        *,
        stuck_after: Callable[[], float],
        storage: Callable[[Callable[[], Any]], Any],
    ) -> None:
        self.store = store
        self.stuck_after = stuck_after
        self._storage = storage

    @staticmethod
    def _item(state: dict[str, Any], now: float, stuck_after: float) -> dict[str, Any]:
        """A server's latest state as /servers and /servers/ID show it."""
        usage = state.get("usage")
        if usage is not None:
            usage = {**usage, "at": iso(usage["timestamp"])}
        return {
            "status": state["status"],
            "error": state.get("error"),
            "data": state["data"],
            "node": state.get("node"),
            "updated": iso(state["updated_at"]),
            "updated_at": state["updated_at"],
            "event_id": state["event_id"],
            "stuck": state["status"] == "installing" and now - float(state["since"]) > stuck_after,
            "usage": usage,
        }

    def _page(self, flt: ServerFilter, after: str, size: int) -> dict[str, Any]:
        return self.store.latest_page(
            after, size, status=flt.status, node=flt.node, prefix=flt.prefix
        )

    def servers(self, flt: ServerFilter) -> tuple[int, Any]:
        """``GET /servers``: ``{"servers": {...}, "next": ID or null}``, streamed."""
        size = _PAGE if flt.limit is None else min(_PAGE, flt.limit)
        first = self._storage(lambda: self._page(flt, flt.after, size))  # 503 while we can
        return 200, Stream(self._stream_servers(flt, first, size), "application/json")

    def _pages(
        self, flt: ServerFilter, page: dict[str, Any], size: int
    ) -> Iterator[tuple[str, Any]]:
        """Every (server, state) the filter lists; ends short (logged) if the database fails."""
        sent, limit = 0, flt.limit
        while True:
            last = None
            for server, state in page.items():
                yield server, state
                last = server
            sent += len(page)
            if len(page) < size or (limit is not None and sent >= limit) or last is None:
                return
            if limit is not None:
                size = min(size, limit - sent)
            errors: tuple[type[Exception], ...] = (*self.store.errors, LightdSyncError)
            try:
                page = self._page(flt, last, size)
            except errors as exc:
                log.error("the receiver's database failed while listing servers: %s", exc)
                raise _CutError from None

    def _stream_servers(
        self, flt: ServerFilter, page: dict[str, Any], size: int
    ) -> Iterator[bytes]:
        """``{"servers": {...}, "next": ID or null}``, a page of the store at a time."""
        yield b'{"servers":{'
        separator, last, sent = b"", None, 0
        now, stuck_after = time.time(), self.stuck_after()  # once per answer, not per server
        try:
            for server, state in self._pages(flt, page, size):
                shown = _compact(self._item(state, now, stuck_after))
                yield separator + json.dumps(server).encode() + b":" + shown
                separator, last = b",", server
                sent += 1
        except _CutError:
            return  # the status is sent: end the body short, so that it is not valid JSON
        more = flt.limit is not None and sent >= flt.limit
        yield b'},"next":' + json.dumps(last if more else None).encode() + b"}"

    def servers_csv(self, flt: ServerFilter) -> tuple[int, Any]:
        """``GET /servers.csv``: the same servers as rows a spreadsheet opens, streamed."""
        size = _PAGE if flt.limit is None else min(_PAGE, flt.limit)
        first = self._storage(lambda: self._page(flt, flt.after, size))
        return 200, Stream(self._stream_csv(flt, first, size), "text/csv; charset=utf-8")

    def _stream_csv(self, flt: ServerFilter, page: dict[str, Any], size: int) -> Iterator[bytes]:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(_CSV_COLUMNS)
        now, stuck_after = time.time(), self.stuck_after()  # once per answer, not per server
        try:
            for server, state in self._pages(flt, page, size):
                item = self._item(state, now, stuck_after)
                usage = item["usage"] or {}
                writer.writerow(
                    [
                        _cell(server),
                        item["node"] or "",
                        item["status"],
                        _cell(item["error"] or ""),
                        _cell(item["data"] or ""),
                        item["updated"],
                        "true" if item["stuck"] else "false",
                        usage.get("at", ""),
                        *[_number(usage.get(name)) for name in BILLING_FIELDS],
                    ]
                )
                if out.tell() > 32768:
                    yield out.getvalue().encode("utf-8")
                    out.seek(0)
                    out.truncate()
        except _CutError:
            return
        yield out.getvalue().encode("utf-8")

    def server(self, tail: str, query: str, exchange: Named) -> tuple[int, Any]:
        """``GET /servers/ID`` (state and history) or ``/servers/ID/usage`` (billing events)."""
        try:  # PEP 3333: the path arrives as bytes decoded as latin-1
            server = tail.encode("latin-1").decode("utf-8")
        except UnicodeEncodeError:
            server = tail
        except UnicodeDecodeError:
            server = ""
        usage = server.endswith("/usage") and server_id_problem(server[: -len("/usage")]) is None
        if usage:
            server = server[: -len("/usage")]
            before, limit = usage_query(query)
        else:
            limit = history_limit(query)
        if server_id_problem(server) is not None:
            raise RequestError(404, "not_found", "server: no updates stored for this id")
        exchange.server = server
        if usage:
            events = self._storage(lambda: self.store.usage(server, before, limit))
            for event in events:
                event["at"] = iso(event["timestamp"])
                event["received"] = iso(event["received_at"])
            more = len(events) == limit
            return 200, {
                "server": server,
                "usage": events,
                "next": events[-1]["id"] if more else None,
            }
        history = self._storage(lambda: self.store.history(server, limit))
        if not history:
            raise RequestError(404, "not_found", "server: no updates stored for this id")
        for entry in history:
            entry["at"] = iso(entry["received_at"])
        state = self._storage(lambda: self.store.server(server))
        doc: dict[str, Any] = {"server": server}
        if state is not None:
            doc.update(self._item(state, time.time(), self.stuck_after()))
        doc["history"] = history
        return 200, doc


class _CutError(Exception):
    """The database failed in the middle of a streamed answer."""


@attrs.frozen
class Stream:
    """A streamed answer: its chunks, sent as they come, and its Content-Type."""

    chunks: Iterator[bytes]
    kind: str


def _cell(text: str) -> str:
    """A CSV cell a spreadsheet will not run as a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _number(value: Optional[float]) -> str:
    return "" if value is None else repr(float(value))


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("ascii")
