"""What the state store keeps in memory: the rows it reads back, and those it will write."""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Optional, Union

import attrs

from .._ids import new_event_id
from .._model import Status, error_value_problem, server_id_problem

__all__ = [
    "parse_rows",
    "Accepted",
    "Discard",
    "Pending",
    "StoredUpdate",
    "drain",
    "id_of",
]


@attrs.frozen
class StoredUpdate:
    """
    A server's latest update as the state file kept it, not acknowledged by the remote.

    The engine re-sends it as ``Update(server, status, data, error=error, event_id=event_id)``.

    .. versionadded:: 0.2.0
    """

    server: str
    status: Status
    data: Optional[str]
    event_id: str
    error: Optional[str] = None
    """The update's ``error`` value (``None``: ``"failed"`` when ``data`` is set).

    .. versionadded:: 0.2.0
    """


def id_of(update: Any, event_id_of: Callable[[Any], str]) -> str:
    if type(update) is Accepted:
        return own_event_id(update)
    return event_id_of(update)


class Discard(dict):  # type: ignore[type-arg]
    """What an inactive store stores into: nothing, at the cost of one call."""

    def __setitem__(self, key: object, value: object) -> None:
        pass


def drain(d: dict[Any, Any], *, values: bool = False) -> list[Any]:
    """
    Take every (key, value) pair out of *d* while callers keep storing into it.

    Each pop is atomic. Pops until *d* is empty: ``popitem()`` takes the
    newest key first, so a count fixed beforehand could leave an older key
    (stored before the call) behind for a key stored meanwhile. Each pop is
    far cheaper than a store, so this ends as soon as the callers pause for a
    moment. With *values*, only the values are kept: each pair is freed at
    once, so a batch of 10,000 updates costs one list, not 10,000 tuples beside it.
    """
    out = []
    pop = d.popitem
    while d:
        try:
            pair = pop()
        except KeyError:  # pragma: no cover - only the writer removes
            break
        out.append(pair[1] if values else pair)
    return out


class Pending:
    """
    What callers gave the store and the writer has not taken yet, and the sync points.

    Each server's latest update (the very object the caller gave: the
    outbox's item, no copy and no tuple around it; the writer takes the
    updates alone, orders them by their ``accepted_at`` and finds the server
    in their own) and the event id the remote acknowledged last.

    No lock: callers store into the two dicts and the writer pops from them,
    each a single dict operation, atomic in CPython (and in free-threaded
    builds, where each dict has its own lock). A lock would double the cost of
    ``accepted()``, and the writer would never hold it anyway. ``marks``
    numbers sync points: ``next()`` of a C iterator is atomic.
    """

    __slots__ = ("acks", "marks", "updates")

    def __init__(self) -> None:
        self.updates: dict[str, Any] = {}  # server -> its latest update
        self.acks: dict[str, str] = {}  # server -> the event id the remote acknowledged
        self.marks = itertools.count(1)  # sync points

    def take(self) -> tuple[int, list[tuple[Any, Any]], list[Any]]:
        """
        Take a sync point, then every acknowledgement, then every update.

        The acknowledgements go first: each one's row is then in the same
        batch or an earlier one. Everything given before the mark is taken.
        """
        mark = next(self.marks)
        acks = drain(self.acks)
        return mark, acks, drain(self.updates, values=True)

    def give_back(self, updates: list[Any], acks: list[tuple[Any, Any]]) -> None:
        """Put back what a failed write took, unless a newer one came meanwhile."""
        pending = self.updates
        for update in updates:
            if update is not None:
                pending.setdefault(update.server, update)
        for server, event_id in acks:
            self.acks.setdefault(server, event_id)

    def discard(self) -> None:
        """From now on, keep nothing: the store runs on memory only."""
        self.updates = Discard()
        self.acks = Discard()


def own_event_id(update: Any) -> str:
    """A store used alone: give an update without one a new event id."""
    make = getattr(update, "make", None)
    update.event_id = make() if make is not None else new_event_id()
    return str(update.event_id)


class Accepted:
    """An update given to :meth:`StateStore.accepted` field by field."""

    __slots__ = ("accepted_at", "data", "error", "event_id", "make", "server", "status")

    def __init__(
        self,
        server: str,
        status: Any,
        data: Optional[str],
        event_id: Union[str, Callable[[], str]],
        error: Optional[str],
    ) -> None:
        self.server, self.status, self.data, self.error = server, status, data, error
        self.event_id: Optional[str] = event_id if isinstance(event_id, str) else None
        self.make: Optional[Callable[[], str]] = None if isinstance(event_id, str) else event_id
        self.accepted_at = time.monotonic()  # orders the rows, as the engine's Item does


def parse_rows(raw: list[tuple[Any, ...]]) -> tuple[list[StoredUpdate], int]:
    """The rows read from the file as updates, and how many were skipped as not valid."""
    rows, skipped = [], 0
    for server, status, data, event_id, error in raw:
        try:
            if server_id_problem(server) is not None or not isinstance(event_id, str):
                raise ValueError(server)
            if error is not None and error_value_problem(error) is not None:
                raise ValueError(server)
            rows.append(StoredUpdate(server, Status(status), data, event_id, error))
        except ValueError:
            skipped += 1
    return rows, skipped
