"""
What both receiver stores do, in SQL shared by SQLite and PostgreSQL: :class:`SqlStore`.

A store subclass gives :meth:`SqlStore._tx`, a transaction yielding a
function that runs one statement (``?`` placeholders) and returns its cursor.
Every decision (duplicates, "newer wins", alerts, a node going stale) is
taken inside such a transaction, so several receivers on one PostgreSQL
database decide each thing once.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence
from typing import Any, Callable, Optional

from .._model import BillingEvent, Event, Update
from . import schema as sql

__all__ = ["ALERT_KINDS", "Run", "SqlStore", "alert_text", "create_schema"]

#: Runs one statement with its parameters; returns the cursor.
Run = Callable[..., Any]

#: Every kind of alert, as the webhook body's ``kind`` says.
ALERT_KINDS = ("server_failed", "server_recovered", "node_stale", "node_online")
#: Attempts at one alert before it is given up as failed.
MAX_ALERT_ATTEMPTS = 12
_BACKOFF_FIRST, _BACKOFF_MAX = 1.0, 300.0
#: Updates stored by one statement at most (SQLite binds at most 32,766 values).
_CHUNK = 500


def alert_text(kind: str, node: Optional[str], server: Optional[str], data: Optional[str]) -> str:
    """The sentence a person reads in a chat channel for one alert."""
    where = f" on node {node}" if node else ""
    if kind == "server_failed":
        why = f": {data}" if data else ""
        return f"Server {server} failed{where}{why}"
    if kind == "server_recovered":
        return f"Server {server} is ready again{where}"
    if kind == "node_stale":
        return f"Node {node} has gone silent (no request within the stale-after time)"
    return f"Node {node} is back online"


def backoff(attempts: int) -> float:
    """Seconds to wait before the next attempt after *attempts* failed ones."""
    return float(min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** min(attempts, 16)))


class SqlStore:
    """The receiver's store logic over either database (see the module's docstring)."""

    #: Kept per server, newest first (``None``: all); set by the subclass.
    history_limit: Optional[int] = None
    #: Whether this is PostgreSQL (rows can be locked with FOR UPDATE).
    _postgres = False
    #: Where alerts go: one row per alert and URL is kept. Set by the receiver.
    webhooks: tuple[str, ...] = ()

    def _tx(self, *, write: bool) -> contextlib.AbstractContextManager[Run]:
        raise NotImplementedError

    def _lock(self, statement: str) -> str:
        return statement + " FOR UPDATE" if self._postgres else statement

    # -- writing ---------------------------------------------------------------

    def add(
        self, update: Update, *, received_at: Optional[float] = None, node: Optional[str] = None
    ) -> bool:
        """
        Store *update* in the history and as its server's latest state, in one transaction.

        An error update is stored with status ``failed``, its ``error`` value
        and its data. An update whose :attr:`~lightd_sync.Update.event_id` this server
        already sent (a retry whose answer was lost, a resync) is not stored twice,
        as long as that earlier one is still in the history.
        lightd-sync's event ids sort in the order one engine made them (UUID
        version 7): an update that arrives after a newer one of the same server
        (a request the remote finished after the client had given up on it)
        goes into the history but does not replace the latest state. An id
        that is not time-ordered, or whose time is more than five minutes
        ahead of this machine's clock, orders nothing: its update replaces the
        latest state, and a later update replaces it.

        Args:
            update: The update received, with the ``X-Lightd-Event-Id`` it came with, if any.
            received_at: When it arrived (seconds since the epoch); default now.
            node: The node that sent it, if known.

                .. versionadded:: 0.2.0

        Returns:
            True if stored, False if it was a duplicate.

        Raises:
            LightdSyncError: The store is closed.
            sqlite3.Error: The database failed (disk full, locked too long, ...).
        """
        return self.add_many([update], received_at=received_at, node=node)[0]

    def add_billing(
        self,
        event: BillingEvent,
        *,
        received_at: Optional[float] = None,
        node: Optional[str] = None,
    ) -> bool:
        """Store one billing event; True if stored, False if its event id was already stored.

        .. versionadded:: 0.2.0
        """
        return self.add_many([event], received_at=received_at, node=node)[0]

    def add_many(
        self,
        events: Sequence[Event],
        *,
        received_at: Optional[float] = None,
        node: Optional[str] = None,
    ) -> list[bool]:
        """
        Store every event in ONE transaction (all or none); for each, whether it was stored.

        Updates are stored as :meth:`add` does, billing events as
        :meth:`add_billing`. Alerts the updates raise are queued in the same
        transaction.

        .. versionadded:: 0.2.0
        """
        when = time.time() if received_at is None else received_at
        with self._tx(write=True) as run:
            return self._apply(run, events, when, node)

    def _apply(
        self, run: Run, events: Sequence[Event], when: float, node: Optional[str]
    ) -> list[bool]:
        """Store *events* in the transaction of *run*; for each, whether it was stored."""
        now = time.time()
        results = [False] * len(events)
        # Rows are locked in server order, so two batches never wait on each other in a cycle.
        updates = sorted(
            ((i, e) for i, e in enumerate(events) if isinstance(e, Update)),
            key=lambda pair: pair[1].server,
        )
        chunk: list[tuple[int, Update]] = []
        servers: set[str] = set()
        for i, update in updates:
            if update.server in servers or len(chunk) >= _CHUNK:
                self._add_updates(run, chunk, (when, now), node, results)
                chunk, servers = [], set()
            chunk.append((i, update))
            servers.add(update.server)
        if chunk:
            self._add_updates(run, chunk, (when, now), node, results)
        for i, event in enumerate(events):
            if isinstance(event, BillingEvent):
                results[i] = self._add_billing(run, event, when, node)
        return results

    def _rows(
        self, build: Callable[..., str], rows: list[tuple[Any, ...]]
    ) -> tuple[str, Sequence[Any]]:
        """A statement taking *rows* and its parameters: one value each in SQLite, one
        array per column in PostgreSQL (4,500 placeholders cost psycopg 15 ms to parse)."""
        if self._postgres:
            return build(len(rows), arrays=True), [list(column) for column in zip(*rows)]
        return build(len(rows)), [value for row in rows for value in row]

    def _add_updates(
        self,
        run: Run,
        chunk: list[tuple[int, Update]],
        times: tuple[float, float],
        node: Optional[str],
        results: list[bool],
    ) -> None:
        """Store updates of different servers: three statements whatever their number.

        *times* is when they arrived and the clock that order keys are judged by.
        """
        when, now = times
        history: list[tuple[Any, ...]] = [
            (when, u.server, u.status.value, u.error_value, u.data, u.event_id, node)
            for _i, u in chunk
        ]
        stored = {row[0] for row in run(*self._rows(sql.insert_updates, history)).fetchall()}
        todo = [(i, u) for i, u in chunk if u.server in stored]
        if not todo:
            return
        names = [u.server for _i, u in todo]
        before: dict[str, str] = {}
        if self.webhooks:
            if self._postgres:
                found = run(sql.STATUSES_ANY + " FOR UPDATE", (names,)).fetchall()
            else:
                found = run(sql.statuses(len(names)), names).fetchall()
            before = dict(found)
        rows: list[tuple[Any, ...]] = [
            (
                u.server,
                u.status.value,
                u.data,
                u.error_value,
                node,
                when,
                when,
                u.event_id,
                sql.order_key(u.event_id, now),
            )
            for _i, u in todo
        ]
        after = {row[0]: row[1:] for row in run(*self._rows(sql.upsert_latest, rows)).fetchall()}
        limit = self.history_limit
        for i, u in todo:
            results[i] = True
            kept, at, eid = after[u.server]
            if limit is not None and kept > limit:
                run(sql.PRUNE, (u.server, kept - limit))
                run(sql.SET_KEPT, (limit, u.server))
            if not (self.webhooks and at == when and eid == u.event_id):
                continue  # no alerts, or an older update that did not replace the latest
            was, status = before.get(u.server), u.status.value
            if status == "failed" and was != "failed":
                kind, data = "server_failed", u.data
            elif status == "ready" and was == "failed":
                kind, data = "server_recovered", None
            else:
                continue
            self._queue_alert(
                run, kind, node=node, server=u.server, status=status, data=data, at=when
            )

    def _add_billing(self, run: Run, event: BillingEvent, when: float, node: Optional[str]) -> bool:
        numbers = (
            event.memory_gb,
            event.cpu_vcpus,
            event.storage_gb,
            event.egress_gb,
            event.duration_hours,
            event.estimated_cost,
        )
        row = (when, event.server, node, event.timestamp, *numbers, event.event_id)
        if not run(sql.INSERT_BILLING, row).fetchall():
            return False
        run(sql.UPSERT_USAGE, (event.server, node, event.timestamp, *numbers))
        if self.history_limit is not None:
            run(sql.PRUNE_BILLING, (event.server, event.server, self.history_limit))
        return True

    def _queue_alert(
        self,
        run: Run,
        kind: str,
        *,
        node: Optional[str],
        server: Optional[str],
        status: Optional[str],
        data: Optional[str],
        at: float,
    ) -> None:
        alert_id = str(uuid.uuid4())
        text = alert_text(kind, node, server, data)
        for url in self.webhooks:
            run(sql.INSERT_ALERT, (alert_id, url, kind, node, server, status, data, at, text, at))

    def touch_nodes(self, seen: dict[str, float]) -> None:
        """Record when each node was last heard; a stale node heard again raises ``node_online``.

        .. versionadded:: 0.2.0
        """
        if not seen:
            return
        with self._tx(write=True) as run:
            for name in sorted(seen):
                at = seen[name]
                row = run(self._lock(sql.NODE_ROW), (name,)).fetchone()
                if row is None:
                    if run(sql.INSERT_NODE, (name, at)).rowcount == 1:
                        continue
                    row = run(self._lock(sql.NODE_ROW), (name,)).fetchone()
                    if row is None:
                        continue
                last_seen, state = row
                if at > float(last_seen) or state != "online":
                    run(sql.SET_NODE, (max(at, float(last_seen)), name))
                if state == "stale" and self.webhooks:
                    self._queue_alert(
                        run, "node_online", node=name, server=None, status=None, data=None, at=at
                    )

    def mark_stale(self, cutoff: float, names: Sequence[str]) -> list[str]:
        """Mark the nodes of *names* last heard before *cutoff* stale (once); the ones marked.

        .. versionadded:: 0.2.0
        """
        if not names:
            return []
        statement = sql.MARK_STALE.format(names=", ".join("?" * len(names)))
        with self._tx(write=True) as run:
            marked = run(statement, (cutoff, *names)).fetchall()
            now = time.time()
            if self.webhooks:
                for name, _last in marked:
                    self._queue_alert(
                        run, "node_stale", node=name, server=None, status=None, data=None, at=now
                    )
        return [row[0] for row in marked]

    def retain(self, before: float) -> int:
        """Delete status and billing history received before *before*; the rows deleted.

        .. versionadded:: 0.2.0
        """
        with self._tx(write=True) as run:
            gone = run(sql.RETAIN_UPDATES, (before,)).rowcount
            gone += run(sql.RETAIN_BILLING, (before,)).rowcount
            run(sql.RETAIN_ALERTS, (before,))
            if gone:
                run(sql.MIGRATE_KEPT)  # the history counts are smaller now
        return max(0, int(gone))

    # -- alerts ------------------------------------------------------------------

    def claim_alerts(self, now: float, lease: float, limit: int = 20) -> list[dict[str, Any]]:
        """
        Take up to *limit* due alerts for this receiver's webhooks, for *lease* seconds.

        Another receiver on the same database does not see them until the
        lease runs out (PostgreSQL: ``FOR UPDATE SKIP LOCKED``).

        .. versionadded:: 0.2.0
        """
        if not self.webhooks:
            return []
        statement = sql.DUE_ALERTS.format(urls=", ".join("?" * len(self.webhooks)))
        if self._postgres:
            statement += " FOR UPDATE SKIP LOCKED"
        with self._tx(write=True) as run:
            rows = run(statement, (now, now, *self.webhooks, limit)).fetchall()
            for row in rows:
                run(sql.LEASE_ALERT, (now + lease, row[0], row[1]))
        keys = ("id", "url", "kind", "node", "server", "status", "data", "at", "text", "attempts")
        return [dict(zip(keys, row)) for row in rows]

    def finish_alert(self, alert: dict[str, Any], ok: bool, now: float) -> str:
        """Record an attempt at *alert*: its new state, ``sent``, ``pending`` or ``failed``.

        .. versionadded:: 0.2.0
        """
        with self._tx(write=True) as run:
            if ok:
                run(sql.ALERT_SENT, (alert["id"], alert["url"]))
                return "sent"
            attempts = int(alert["attempts"]) + 1
            state = "failed" if attempts >= MAX_ALERT_ATTEMPTS else "pending"
            run(
                sql.ALERT_RETRY,
                (now + backoff(attempts - 1), state, alert["id"], alert["url"]),
            )
        return state

    def alert_counts(self) -> dict[str, int]:
        """Alerts by state: ``pending``, ``sent``, ``failed``.

        .. versionadded:: 0.2.0
        """
        counts = {"pending": 0, "sent": 0, "failed": 0}
        with self._tx(write=False) as run:
            for state, n in run(sql.ALERTS_BY_STATE).fetchall():
                counts[str(state)] = int(n)
        return counts

    # -- reading -----------------------------------------------------------------

    def latest(self) -> dict[str, dict[str, Any]]:
        """
        Return the latest state of every server: ``{server: {status, data, updated_at, ...}}``.

        Holds the whole fleet in memory: the receiver itself reads it a page
        at a time with :meth:`latest_page`.

        Raises:
            LightdSyncError: The store is closed.
        """
        result: dict[str, dict[str, Any]] = {}
        after = ""
        while True:
            page = self.latest_page(after, 1000)
            result.update(page)
            if len(page) < 1000:
                return result
            after = next(reversed(page))

    def latest_page(
        self,
        after: str,
        limit: int,
        *,
        status: Optional[str] = None,
        node: Optional[str] = None,
        prefix: Optional[str] = None,
    ) -> dict[str, dict[str, Any]]:
        """
        Return the latest state of at most *limit* servers whose ids sort after *after*.

        Only those with *status*, last heard from *node*, and whose id starts
        with *prefix*, when given. Each state also has ``error``, ``node``,
        ``since`` and ``usage``.

        .. versionchanged:: 0.2.0
            The filters, and the fields after ``event_id``.

        Raises:
            LightdSyncError: The store is closed.
        """
        filters, op = "", ">"
        params: list[Any] = [after]
        if status is not None:
            filters += " AND l.status = ?"
            params.append(status)
        if node is not None:
            filters += " AND l.node = ?"
            params.append(node)
        if prefix:
            if after < prefix:  # start at the prefix, not at the first server
                op, params[0] = ">=", prefix
            filters += " AND substr(l.server, 1, CAST(? AS INTEGER)) = ?"
            params += [len(prefix), prefix]
            last = ord(prefix[-1]) + 1
            if last <= 0x10FFFF and not 0xD800 <= last <= 0xDFFF:
                # and stop past the last id that starts with it
                filters += " AND l.server < ?"
                params.append(prefix[:-1] + chr(last))
        statement = sql.LATEST_PAGE.format(after=op, filters=filters)
        with self._tx(write=False) as run:
            rows = run(statement, (*params, limit)).fetchall()
        return {row[0]: sql.latest_row(row) for row in rows}

    def server(self, server: str) -> Optional[dict[str, Any]]:
        """The latest state of *server* (as :meth:`latest_page` gives it), or None.

        .. versionadded:: 0.2.0
        """
        with self._tx(write=False) as run:
            row = run(sql.LATEST_ONE, (server,)).fetchone()
        return None if row is None else sql.latest_row(row)

    def history(self, server: str, limit: Optional[int] = None) -> list[dict[str, Any]]:
        """
        Return the updates of *server*, oldest first (the newest *limit* ones, if given).

        Each is ``{id, received_at, status, error, data, event_id, node}``; an
        unknown server has an empty history.

        Raises:
            LightdSyncError: The store is closed.
        """
        with self._tx(write=False) as run:
            if limit is None:  # no LIMIT: SQLite says -1, PostgreSQL NULL
                limit = None if self._postgres else -1
            rows = run(sql.HISTORY, (server, limit)).fetchall()
        return sql.history_rows(rows)

    def usage(
        self, server: str, before: Optional[int] = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The billing events of *server*, newest first, those with an id below *before*.

        .. versionadded:: 0.2.0
        """
        with self._tx(write=False) as run:
            rows = run(sql.USAGE_PAGE, (server, before or 2**62, limit)).fetchall()
        return sql.usage_rows(rows)

    def nodes(self) -> dict[str, dict[str, Any]]:
        """Per node heard of: ``last_seen``, ``servers`` and ``cost_24h`` (from the database).

        .. versionadded:: 0.2.0
        """
        out: dict[str, dict[str, Any]] = {}

        def entry(name: str) -> dict[str, Any]:
            return out.setdefault(name, {"last_seen": None, "servers": 0, "cost_24h": 0.0})

        with self._tx(write=False) as run:
            for name, last_seen, _state in run(sql.NODES).fetchall():
                entry(name)["last_seen"] = float(last_seen)
            for name, n in run(sql.SERVERS_BY_NODE).fetchall():
                entry(name)["servers"] = int(n)
            for name, cost in run(sql.COST_BY_NODE, (int(time.time()) - 86400,)).fetchall():
                entry(name)["cost_24h"] = float(cost or 0.0)
        return out

    def status_counts(self, stuck_before: float) -> tuple[dict[str, int], int]:
        """Servers by latest status, and how many are installing since before *stuck_before*.

        .. versionadded:: 0.2.0
        """
        counts = {"installing": 0, "ready": 0, "failed": 0}
        with self._tx(write=False) as run:
            for status, n in run(sql.SERVERS_BY_STATUS).fetchall():
                counts[str(status)] = int(n)
            found = run(sql.STUCK, (stuck_before,)).fetchone()
        return counts, int(found[0]) if found else 0

    def resources(self) -> dict[str, dict[str, float]]:
        """Per node (``""``: unknown), the sums of its servers' latest usage.

        .. versionadded:: 0.2.0
        """
        names = ("memory_gb", "cpu_vcpus", "storage_gb", "egress_gb", "estimated_cost", "servers")
        with self._tx(write=False) as run:
            rows = run(sql.RESOURCES_BY_NODE).fetchall()
        return {row[0]: {k: float(v or 0) for k, v in zip(names, row[1:])} for row in rows}

    def count(self) -> int:
        """
        Return how many updates are stored, over all servers.

        Raises:
            LightdSyncError: The store is closed.
        """
        with self._tx(write=False) as run:
            (total,) = run(sql.COUNT).fetchone()
        return int(total)


def create_schema(run: Run, have_latest: set[str], have_updates: set[str]) -> None:
    """Create the tables, then add what an older database lacks (in the caller's transaction)."""
    missing = [name for name in sql.NEW_COLUMNS if name not in have_latest]
    for name in missing:
        run(f"ALTER TABLE latest ADD COLUMN {name} {sql.NEW_COLUMNS[name]}")
    for name, kind in sql.NEW_UPDATE_COLUMNS.items():
        if name not in have_updates:
            run(f"ALTER TABLE updates ADD COLUMN {name} {kind}")
    if "kept" in missing:
        run(sql.MIGRATE_KEPT)
    if "order_key" in missing:
        now = time.time()
        for server, eid in run(sql.MIGRATE_KEYS).fetchall():
            run(sql.SET_KEY, (sql.order_key(eid, now), server))
    if "since" in missing:
        run(sql.MIGRATE_SINCE)
    if "error" in missing:
        run(sql.MIGRATE_ERROR)
