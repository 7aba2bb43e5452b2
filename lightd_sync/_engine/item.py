"""The value that moves through the engine: one accepted update or billing event."""

from __future__ import annotations

from time import monotonic as _monotonic
from typing import Optional

import attrs

from .._model import (
    MAX_MESSAGE_LENGTH,
    BillingEvent,
    Event,
    Status,
    Update,
    check_server_id,
    error_value_problem,
)

__all__ = ["Item", "error_item"]


class Item:
    """
    One accepted update (or billing event): made once per call, queued, retried, maybe re-sent.

    What it says never changes once made. Its event id is given once, under
    the outbox lock (when a worker takes it, or when the state writer asks
    first), and then never changes: retries and re-sends carry the same one.
    ``attempts`` is written only by the worker that holds the item in flight
    (one at a time: the outbox hands an item to one worker).

    The same object is re-sent by resync, so identity (``is``) tells whether
    it is still its server's latest update.
    """

    __slots__ = (
        "accepted_at",
        "attempts",
        "billing",
        "data",
        "error",
        "event_id",
        "server",
        "status",
    )

    def __init__(
        self,
        server: str,
        status: Status,
        data: Optional[str] = None,
        error: Optional[str] = None,
        *,
        event_id: Optional[str] = None,
        billing: Optional[BillingEvent] = None,
    ) -> None:
        self.server = server
        self.status = status
        self.data = data
        self.error = error
        self.billing = billing
        self.event_id = event_id
        self.accepted_at = _monotonic()
        self.attempts = 0

    def __repr__(self) -> str:
        what = "billing" if self.billing is not None else self.status.value
        return f"<Item {self.server!r} {what} event_id={self.event_id}>"

    def event(self) -> Event:
        """The :class:`~lightd_sync.Update` or :class:`~lightd_sync.BillingEvent` sent for it."""
        if self.billing is not None:
            return attrs.evolve(self.billing, event_id=self.event_id)
        return Update(self.server, self.status, self.data, error=self.error, event_id=self.event_id)


def error_item(server: str, message: Optional[str], error: str) -> Item:
    """The item of ``SyncEngine.error(server, message, error=error)``; raises what it says."""
    check_server_id(server)
    if message is not None:
        if not isinstance(message, str):
            raise TypeError(f"message must be a str or None, not {type(message).__name__}")
        if len(message) > MAX_MESSAGE_LENGTH:
            message = message[:MAX_MESSAGE_LENGTH]
    problem = error_value_problem(error)
    if problem is not None:
        raise (TypeError if type(error) is not str else ValueError)(problem)
    return Item(server, Status.FAILED, message, error)
