"""The in-memory half of the testing kit: a recording transport and the testing switch."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Callable, Optional

from ._engine.policy import set_testing_mode
from ._exceptions import DeliveryError
from ._forksafe import after_fork_in_child
from ._model import Event
from ._transports.base import Transport

__all__ = ["RecordingTransport", "TestingMode", "set_testing"]


class RecordingTransport(Transport):
    """
    An in-memory :class:`~lightd_sync.Transport` that records every update it is asked to send.

    ``handler(update)`` scripts the remote: it returns normally (delivered) or
    raises a :class:`~lightd_sync.DeliveryError` subclass, for example
    ``RemoteRejectedError("busy", status=503, retryable=True)``. Without a
    handler every update is delivered. :attr:`healthy` decides
    :meth:`check_health`.

    >>> from lightd_sync import SyncEngine, load_config
    >>> from lightd_sync.testing import RecordingTransport
    >>> transport = RecordingTransport()
    >>> config = load_config({"remote": {"enabled": False}})
    >>> with SyncEngine(config, transport=transport) as engine:
    ...     engine.update("s1", "ready")
    ...     engine.flush(5)
    True
    True
    >>> [(u.server, u.status.value) for u in transport.sent]
    [('s1', 'ready')]

    With ``batch=N`` it takes up to N events per :meth:`send_many` call, as a
    transport talking to a remote that offers batches does; :attr:`batches`
    records each call's events. ``batch`` may be changed at any time (a remote
    that withdraws its offer: ``transport.batch = 1``).

    Args:
        handler: Called with each update, in the engine's lane thread.
        batch: What :meth:`max_batch` answers: the most events per
            :meth:`send_many` call (default 1: one at a time).

    .. versionadded:: 0.2.0
    .. versionchanged:: 0.2.0 ``batch``, :meth:`send_many` and :attr:`batches`.
    """

    name = "recording"

    def __init__(
        self, handler: Optional[Callable[[Event], None]] = None, *, batch: int = 1
    ) -> None:
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        if type(batch) is not int or batch < 1:
            raise ValueError(f"batch must be a whole number >= 1, got {batch!r}")
        self.handler = handler
        #: What :meth:`max_batch` answers (settable at any time).
        self.batch = batch
        #: Whether :meth:`check_health` succeeds (settable at any time).
        self.healthy = True
        # Guards _sent and _batches: lanes append while the test reads.
        self._lock = threading.Lock()
        self._sent: list[Event] = []
        self._batches: list[list[Event]] = []
        self.closed = False
        after_fork_in_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RecordingTransport(sent={len(self._sent)}, healthy={self.healthy})"

    @property
    def sent(self) -> list[Event]:
        """
        Every update the engine asked to send, in order, rejected attempts included.

        A new list on each read (a snapshot): safe to read while the engine sends.
        """
        with self._lock:
            return list(self._sent)

    @property
    def batches(self) -> list[list[Event]]:
        """
        The events of each :meth:`send_many` call, in order (a snapshot).

        Events handed to :meth:`send` alone are in :attr:`sent` only.
        """
        with self._lock:
            return [list(batch) for batch in self._batches]

    def clear(self) -> None:
        """Forget what was sent."""
        with self._lock:
            self._sent.clear()
            self._batches.clear()

    def max_batch(self) -> int:
        """Return :attr:`batch`."""
        return max(1, int(self.batch))

    def send_many(self, updates: Sequence[Event]) -> list[Optional[DeliveryError]]:
        """Record the call's events as one batch, then let the handler decide for each."""
        with self._lock:
            self._batches.append(list(updates))
        return super().send_many(updates)  # one send() each: the handler decides

    def send(self, update: Event) -> None:
        """Record *update*, then let the handler decide (delivered unless it raises)."""
        with self._lock:
            self._sent.append(update)
        if self.handler is not None:
            self.handler(update)

    def check_health(self) -> None:
        """Return if :attr:`healthy`; raise :class:`~lightd_sync.RemoteUnreachableError` if not."""
        if not self.healthy:
            from ._exceptions import RemoteUnreachableError

            raise RemoteUnreachableError("the recording transport is set unhealthy")

    def close(self) -> None:
        """Mark the transport closed (it keeps what it recorded)."""
        self.closed = True


class TestingMode:
    """
    What :func:`set_testing` returns: a context manager that restores the previous mode.

    .. versionadded:: 0.2.0
    """

    __test__ = False  # not a pytest test class

    def __init__(self, previous: bool) -> None:
        self.previous = previous

    def __enter__(self) -> TestingMode:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        set_testing_mode(self.previous)


def set_testing(on: bool = True) -> TestingMode:
    """
    Switch testing mode on (or off): every backoff, retry delay and early health probe waits 0 s.

    Retries still happen, instantly; the remote's ``Retry-After`` is cut to 0.
    The mode is read at each wait, so it applies to engines already running.
    Works as a plain call and as a context manager that restores the
    previous mode:

    >>> from lightd_sync.testing import set_testing
    >>> with set_testing():
    ...     pass  # engines here retry without waiting

    .. versionadded:: 0.2.0
    """
    return TestingMode(set_testing_mode(on))
