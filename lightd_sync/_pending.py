"""An update on its way: the one value that moves through the engine's collaborators."""

from __future__ import annotations

import threading
from time import monotonic as _monotonic
from typing import Optional

from ._forksafe import after_fork_in_child
from ._ids import new_event_id
from ._model import Status, Update

__all__ = ["Pending"]

# Guards giving a Pending its event id once (a lane and the state writer may both ask).
_id_lock = threading.Lock()


class Pending:
    """
    One accepted update: made once per ``update()`` call, queued, retried and maybe re-sent.

    The same object is re-sent by resync, so identity (``is``) tells whether it
    is still its server's latest update. Its event id is made on first need
    (off the caller's thread) and then never changes: retries and re-sends
    carry the same one.

    Attributes:
        server, status, data: What the update says (``data``: an error update's message).
        queued: Whether it is in a lane now (False once dropped or settled).
        accepted_at: ``time.monotonic()`` when ``update()`` accepted it.
        attempts: Requests made for it so far, all deliveries included.
    """

    __slots__ = (
        "accepted_at",
        "attempts",
        "data",
        "event_id",
        "queued",
        "server",
        "status",
    )

    def __init__(
        self,
        server: str,
        status: Status,
        data: Optional[str],
        event_id: Optional[str] = None,
    ) -> None:
        self.server = server
        self.status = status
        self.data = data
        self.event_id = event_id
        self.queued = False
        self.accepted_at = _monotonic()
        self.attempts = 0

    def __repr__(self) -> str:
        return f"<Pending {self.server!r} {self.status.value} event_id={self.event_id}>"

    def ensure_event_id(self) -> str:
        """Return the event id, making it on first call (once, whichever thread asks)."""
        event_id = self.event_id
        if event_id is None:
            with _id_lock:
                if self.event_id is None:
                    self.event_id = new_event_id()
                event_id = self.event_id
        return event_id

    def update(self) -> Update:
        """The :class:`~lightd_sync.Update` sent for it (a lane builds it once per delivery)."""
        return Update(self.server, self.status, self.data, event_id=self.ensure_event_id())


def _reset_in_child() -> None:
    global _id_lock
    _id_lock = threading.Lock()


after_fork_in_child(_reset_in_child)
