"""The null transport: accepts and discards."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from .._exceptions import DeliveryError
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

    def max_batch(self) -> int:
        """500: any number is discarded at once.

        .. versionadded:: 0.2.0
        """
        return 500

    def send_many(self, updates: Sequence[Event]) -> list[Optional[DeliveryError]]:
        """Discard *updates*.

        .. versionadded:: 0.2.0
        """
        return [None] * len(updates)

    def __repr__(self) -> str:
        return "NullTransport()"
