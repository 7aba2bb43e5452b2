"""The null transport: accepts and discards."""

from __future__ import annotations

from .._model import Event
from .base import Transport

__all__ = ["NullTransport"]


class NullTransport(Transport):
    """
    Accept every update and discard it; always healthy.

    Used when ``remote.enabled`` is false, whatever ``transport`` says.
    """

    name = "null"

    def send(self, update: Event) -> None:
        """Discard *update*."""

    def __repr__(self) -> str:
        return "NullTransport()"
