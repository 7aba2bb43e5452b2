"""The values of the protocol: statuses, lifecycle events, updates, health and stats."""

from __future__ import annotations

import enum
import math
from typing import Any, Optional, Union

import attrs

__all__ = [
    "BILLING_FIELDS",
    "MAX_SERVER_ID_LENGTH",
    "BillingEvent",
    "Event",
    "HealthState",
    "Lifecycle",
    "Status",
    "LatencyHistogram",
    "MAX_MESSAGE_LENGTH",
    "Outcome",
    "SyncStats",
    "Update",
    "check_server_id",
    "parse_status",
]

#: The longest server id the protocol's reference remote accepts.
MAX_SERVER_ID_LENGTH = 255
#: The longest error message (``data``) sent; :meth:`SyncEngine.error` cuts longer ones to
#: this. The ``error`` value itself is bounded by the same length.
MAX_MESSAGE_LENGTH = 8192


class Status(str, enum.Enum):
    """
    The install status of a container, as the remote receives it.

    Members compare equal to their string value (``Status.READY == "ready"``).
    """

    INSTALLING = "installing"
    """The container is being installed."""
    READY = "ready"
    """Installation finished; the container is ready to start."""
    FAILED = "failed"
    """Installation or an operation failed."""

    def __str__(self) -> str:
        return self.value


class Lifecycle(str, enum.Enum):
    """
    A Lightd lifecycle event; :attr:`status` is the status it is synced as.

    ``Lifecycle.ERROR`` is sent in the protocol's error form
    (``"error": "failed"`` with ``data``).
    """

    STARTED = "Started"
    CREATING_CONTAINER = "CreatingContainer"
    READY = "Ready"
    ERROR = "Error"
    REINSTALL_STARTED = "ReinstallStarted"

    @property
    def status(self) -> Status:
        """The status the protocol maps this event to."""
        return _LIFECYCLE_STATUS[self]

    def __str__(self) -> str:
        return self.value


_LIFECYCLE_STATUS = {
    Lifecycle.STARTED: Status.INSTALLING,
    Lifecycle.CREATING_CONTAINER: Status.INSTALLING,
    Lifecycle.READY: Status.READY,
    Lifecycle.ERROR: Status.FAILED,
    Lifecycle.REINSTALL_STARTED: Status.INSTALLING,
}

# Status members hash and compare like their values, so one dict answers both
# ``"ready"`` and ``Status.READY`` with a single lookup (the hot path uses it).
_STATUS_BY_VALUE: dict[Any, Status] = {s.value: s for s in Status}
_LIFECYCLE_BY_VALUE: dict[Any, Lifecycle] = {e.value: e for e in Lifecycle}


def parse_status(status: Union[Status, str]) -> Status:
    """
    Return *status* as a :class:`Status`, accepting the member or its value.

    Raises:
        TypeError: *status* is not a string.
        ValueError: *status* is not one of the protocol's values.
    """
    if not isinstance(status, str):
        raise TypeError(f"status must be a Status or str, not {type(status).__name__}")
    found = _STATUS_BY_VALUE.get(status)
    if found is None:
        allowed = ", ".join(repr(s.value) for s in Status)
        raise ValueError(f"unknown status {status!r}; expected one of {allowed}")
    return found


def parse_lifecycle(event: Union[Lifecycle, str]) -> Lifecycle:
    """Return *event* as a :class:`Lifecycle`, accepting the member or its value."""
    if not isinstance(event, str):
        raise TypeError(f"event must be a Lifecycle or str, not {type(event).__name__}")
    found = _LIFECYCLE_BY_VALUE.get(event)
    if found is None:
        allowed = ", ".join(repr(e.value) for e in Lifecycle)
        raise ValueError(f"unknown lifecycle event {event!r}; expected one of {allowed}")
    return found


def server_id_problem(server: object) -> Optional[str]:
    """Say what is wrong with *server* as a server id, or return None if it is fine."""
    if type(server) is not str:
        return f"server id must be a str, not {type(server).__name__}"
    if not server:
        return "server id must not be empty"
    if len(server) > MAX_SERVER_ID_LENGTH:
        return f"server id is {len(server)} characters long; at most {MAX_SERVER_ID_LENGTH}"
    if not server.isprintable():
        return f"server id {server!r} contains control or non-printable characters"
    return None


def check_server_id(server: object) -> str:
    """
    Return *server* if it is a valid server id.

    Raises:
        TypeError: not a ``str``.
        ValueError: empty, over 255 characters, or with non-printable characters.
    """
    problem = server_id_problem(server)
    if problem is None:
        return server  # type: ignore[return-value]  # checked just above
    if type(server) is not str:
        raise TypeError(problem)
    raise ValueError(problem)


def _valid_server(_inst: object, _attr: attrs.Attribute[str], value: str) -> None:
    check_server_id(value)


def _valid_data(inst: Update, _attr: attrs.Attribute[Optional[str]], value: Optional[str]) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"data must be a str, not {type(value).__name__}")
    if inst.status is not Status.FAILED:
        raise ValueError("data is only sent with an error update (status 'failed')")


def error_value_problem(value: object) -> Optional[str]:
    """Say what is wrong with *value* as an update's ``error`` value, or return None."""
    if type(value) is not str:
        return f"error must be a str, not {type(value).__name__}"
    if not value:
        return "error must not be empty"
    if len(value) > MAX_MESSAGE_LENGTH:
        return f"error is {len(value)} characters long; at most {MAX_MESSAGE_LENGTH}"
    return None


def _valid_error(inst: Update, _attr: attrs.Attribute[Optional[str]], value: Optional[str]) -> None:
    if value is None:
        return
    problem = error_value_problem(value)
    if problem is not None:
        raise (TypeError if type(value) is not str else ValueError)(problem)
    if inst.status is not Status.FAILED:
        raise ValueError("error is only sent with an error update (status 'failed')")


@attrs.frozen
class Update:
    """
    One status update of one server.

    An update with ``error`` or ``data`` is an *error update*: it is sent in the
    protocol's error form, ``"error"`` (``"failed"`` unless said otherwise)
    with ``"data"`` when there is a message. Both are only allowed with
    :attr:`Status.FAILED`.

    >>> Update("my-server-001", Status.INSTALLING).body()
    {'event': 'update', 'server': 'my-server-001', 'status': 'installing'}
    >>> Update("my-server-001", Status.FAILED, "image not found").body()
    {'event': 'update', 'server': 'my-server-001', 'error': 'failed', 'data': 'image not found'}
    >>> Update("my-server-001", Status.FAILED, error="timeout").body()
    {'event': 'update', 'server': 'my-server-001', 'error': 'timeout'}
    """

    server: str = attrs.field(validator=_valid_server)
    status: Status = attrs.field(converter=parse_status)
    data: Optional[str] = attrs.field(default=None, validator=_valid_data)
    error: Optional[str] = attrs.field(default=None, validator=_valid_error, kw_only=True)
    """The protocol's ``error`` value (``"failed"``, ``"timeout"`` or any message).

    ``None`` with ``data`` set means ``"failed"``.

    .. versionadded:: 0.2.0
    """
    event_id: Optional[str] = attrs.field(default=None, eq=False, kw_only=True)
    """A UUID the remote may use to de-duplicate retried and resynced updates (an extension).

    .. versionadded:: 0.1.0
    """

    @property
    def is_error(self) -> bool:
        """True for an error update (sent with ``"error"`` and, if any, ``data``)."""
        return self.error is not None or self.data is not None

    @property
    def error_value(self) -> Optional[str]:
        """The ``error`` value sent: ``None`` for a status update, else ``error`` or ``"failed"``.

        .. versionadded:: 0.2.0
        """
        if self.error is not None:
            return self.error
        return Status.FAILED.value if self.data is not None else None

    def body(self) -> dict[str, str]:
        """Return exactly the JSON body the protocol sends for this update."""
        if self.error is None and self.data is None:
            return {"event": "update", "server": self.server, "status": self.status.value}
        body = {"event": "update", "server": self.server, "error": self.error or "failed"}
        if self.data is not None:
            body["data"] = self.data
        return body


#: The numbers of a billing event, in the order Lightd's client sends them.
BILLING_FIELDS = (
    "memory_gb",
    "cpu_vcpus",
    "storage_gb",
    "egress_gb",
    "duration_hours",
    "estimated_cost",
)


def billing_number_problem(name: str, value: object) -> Optional[str]:
    """Say what is wrong with *value* as the billing field *name*, or return None."""
    if type(value) not in (int, float):
        return f"{name}: must be a number, not {type(value).__name__}"
    if type(value) is int and value > 2**63:  # 10**400 is an int; as a float it is inf
        return f"{name}: must be a finite number"
    if not math.isfinite(value):  # type: ignore[arg-type]  # int or float, checked above
        return f"{name}: must be a finite number"
    if value < 0:  # type: ignore[operator]
        return f"{name}: must not be negative"
    return None


def timestamp_problem(value: object) -> Optional[str]:
    """Say what is wrong with *value* as a billing ``timestamp``, or return None."""
    if type(value) is not int:
        return f"timestamp: must be whole seconds since the epoch, not {type(value).__name__}"
    if not 0 <= value < 2**63:
        return "timestamp: must be from 0 to 2**63 - 1 seconds since the epoch"
    return None


def _number(name: str, value: object) -> float:
    problem = billing_number_problem(name, value)
    if problem is not None:
        raise (TypeError if "must be a number" in problem else ValueError)(problem)
    return float(value)  # type: ignore[arg-type]  # int or float, checked above


def _memory_gb(value: object) -> float:
    return _number("memory_gb", value)


def _cpu_vcpus(value: object) -> float:
    return _number("cpu_vcpus", value)


def _storage_gb(value: object) -> float:
    return _number("storage_gb", value)


def _egress_gb(value: object) -> float:
    return _number("egress_gb", value)


def _duration_hours(value: object) -> float:
    return _number("duration_hours", value)


def _estimated_cost(value: object) -> float:
    return _number("estimated_cost", value)


def _valid_timestamp(_inst: object, _attr: attrs.Attribute[int], value: int) -> None:
    problem = timestamp_problem(value)
    if problem is not None:
        raise (TypeError if type(value) is not int else ValueError)(problem)


@attrs.frozen
class BillingEvent:
    """
    One billing event: a container's resource use, as Lightd v2 reports it about hourly.

    It is sent to the same ``POST {url}/update`` as a status update, and never
    changes the server's install status. The numbers are non-negative and
    finite (kept as floats, as Lightd's client sends them); ``timestamp`` is
    whole seconds since the epoch, UTC.

    >>> BillingEvent("my-server-001", memory_gb=0.5, cpu_vcpus=0.25, storage_gb=2,
    ...              egress_gb=0.01, duration_hours=1, estimated_cost=0.0123,
    ...              timestamp=1767225600).body()  # doctest: +NORMALIZE_WHITESPACE
    {'event': 'billing', 'server': 'my-server-001', 'memory_gb': 0.5, 'cpu_vcpus': 0.25,
     'storage_gb': 2.0, 'egress_gb': 0.01, 'duration_hours': 1.0, 'estimated_cost': 0.0123,
     'timestamp': 1767225600}

    .. versionadded:: 0.2.0
    """

    server: str = attrs.field(validator=_valid_server)
    memory_gb: float = attrs.field(converter=_memory_gb, kw_only=True)
    cpu_vcpus: float = attrs.field(converter=_cpu_vcpus, kw_only=True)
    storage_gb: float = attrs.field(converter=_storage_gb, kw_only=True)
    egress_gb: float = attrs.field(converter=_egress_gb, kw_only=True)
    duration_hours: float = attrs.field(converter=_duration_hours, kw_only=True)
    estimated_cost: float = attrs.field(converter=_estimated_cost, kw_only=True)
    timestamp: int = attrs.field(validator=_valid_timestamp, kw_only=True)
    event_id: Optional[str] = attrs.field(default=None, eq=False, kw_only=True)
    """A UUID the remote may use to de-duplicate re-sent events (an extension)."""

    def body(self) -> dict[str, Any]:
        """Return exactly the JSON body the protocol sends for this event, in Lightd's order."""
        return {
            "event": "billing",
            "server": self.server,
            "memory_gb": self.memory_gb,
            "cpu_vcpus": self.cpu_vcpus,
            "storage_gb": self.storage_gb,
            "egress_gb": self.egress_gb,
            "duration_hours": self.duration_hours,
            "estimated_cost": self.estimated_cost,
            "timestamp": self.timestamp,
        }


#: What a transport sends: a status (or error) update, or a billing event.
Event = Union[Update, BillingEvent]


@attrs.frozen
class HealthState:
    """
    What the last health check of the remote found.

    Attributes:
        healthy: ``True`` or ``False`` after a check; ``None`` before the first.
        checked_at: When the last check finished (seconds since the epoch).
        latency: How long the last check took, in seconds.
        consecutive_failures: Failed checks in a row (0 when healthy).
        error: Why the last check failed, if it did.
    """

    healthy: Optional[bool] = None
    checked_at: Optional[float] = None
    latency: Optional[float] = None
    consecutive_failures: int = 0
    error: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        """Return the state as a JSON-ready dict."""
        return attrs.asdict(self)


@attrs.frozen
class SyncStats:
    """
    Counters of every update an engine was given.

    In every snapshot ``submitted == delivered + failed + dropped + superseded + pending``:
    no update disappears uncounted.

    Attributes:
        submitted: Updates accepted for delivery or refused: every valid call
            to ``update``/``error``/``lifecycle``, plus every resync re-send.
        delivered: Accepted by the remote.
        failed: Given up on: the remote failed them, or ``close`` ran out of time.
        dropped: Refused at once: the queue was full or the engine closed.
        superseded: Given up on while being retried because a newer update of
            the same server was queued behind it (the remote only needs the latest).
        pending: Queued or in flight now.
        resynced: Of ``submitted``, how many were re-sends of a server's latest
            update after the remote recovered.
    """

    submitted: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    pending: int = 0
    superseded: int = 0
    resynced: int = 0

    @property
    def balanced(self) -> bool:
        """Whether the invariant holds (it always should)."""
        return self.submitted == (
            self.delivered + self.failed + self.dropped + self.superseded + self.pending
        )

    def to_dict(self) -> dict[str, int]:
        """Return the counters as a JSON-ready dict."""
        return attrs.asdict(self)


#: Upper bounds (seconds) of the delivery latency histogram's buckets.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@attrs.frozen
class LatencyHistogram:
    """
    How long successful deliveries took (one request each, retries not included).

    Attributes:
        bounds: Upper bounds of the buckets, in seconds, ascending.
        counts: Deliveries per bucket: ``counts[i]`` took at most ``bounds[i]``
            and more than ``bounds[i-1]``; the last entry counts the slower ones.
        total: The sum of all durations, in seconds.
        count: How many deliveries were measured.

    .. versionadded:: 0.1.0
    """

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: tuple[int, ...] = (0,) * (len(LATENCY_BUCKETS) + 1)
    total: float = 0.0
    count: int = 0

    def cumulative(self) -> list[tuple[float, int]]:
        """Return ``(upper bound, deliveries at most that long)`` pairs, ending with infinity."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            running += n
            out.append((bound, running))
        return out


#: Every ``result`` an :class:`Outcome` can have.
RESULTS = ("delivered", "failed", "dropped", "superseded")


@attrs.frozen
class Outcome:
    """
    How one update ended, as ``SyncEngine(on_outcome=...)`` is told.

    Attributes:
        update: The update, with its event id.
        result: ``"delivered"``, ``"failed"``, ``"dropped"`` or ``"superseded"``.
        reason: ``None`` when delivered; otherwise a short stable code:
            dropped ``queue_full`` or ``closed``; failed ``timeout``,
            ``unreachable``, ``auth``, ``http_4xx``, ``http_5xx``, ``rejected``,
            ``too_large``, ``redirect`` or ``closed``; superseded ``superseded``.
        attempts: Requests made for it (0 for a dropped update).
        latency: Seconds from ``update()`` to this outcome; ``None`` for a
            dropped update.

    .. versionadded:: 0.2.0
    """

    update: Event  # an Update, or (since 0.2.0) a BillingEvent
    result: str
    reason: Optional[str]
    attempts: int
    latency: Optional[float]
